#include "service/metrics/loopback_peer.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

absl::StatusOr<uid_t> LoopbackPeerUid(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
    return ErrnoStatus(errno, "getsockname");
  }
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
    return ErrnoStatus(errno, "getpeername");
  }
  if (local.ss_family != peer.ss_family ||
      (local.ss_family != AF_INET && local.ss_family != AF_INET6)) {
    return absl::InvalidArgumentError("not a TCP connection over IPv4 or IPv6");
  }
  // The peer's socket: source its address and port, destination ours.
  struct {
    nlmsghdr header;
    inet_diag_req_v2 req;
  } ask{};
  ask.header.nlmsg_len = sizeof(ask);
  ask.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  ask.header.nlmsg_flags = NLM_F_REQUEST;
  ask.req.sdiag_family = local.ss_family;
  ask.req.sdiag_protocol = IPPROTO_TCP;
  ask.req.idiag_states = ~0u;
  ask.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  ask.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (local.ss_family == AF_INET) {
    const auto& l = reinterpret_cast<const sockaddr_in&>(local);
    const auto& p = reinterpret_cast<const sockaddr_in&>(peer);
    ask.req.id.idiag_sport = p.sin_port;
    ask.req.id.idiag_dport = l.sin_port;
    std::memcpy(ask.req.id.idiag_src, &p.sin_addr, sizeof(p.sin_addr));
    std::memcpy(ask.req.id.idiag_dst, &l.sin_addr, sizeof(l.sin_addr));
  } else {
    const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
    const auto& p = reinterpret_cast<const sockaddr_in6&>(peer);
    ask.req.id.idiag_sport = p.sin6_port;
    ask.req.id.idiag_dport = l.sin6_port;
    std::memcpy(ask.req.id.idiag_src, &p.sin6_addr, sizeof(p.sin6_addr));
    std::memcpy(ask.req.id.idiag_dst, &l.sin6_addr, sizeof(l.sin6_addr));
    ask.req.id.idiag_if = p.sin6_scope_id;
  }
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return ErrnoStatus(errno, "socket(NETLINK_SOCK_DIAG)");
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(nl.get(), &ask, sizeof(ask), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof(kernel)) != static_cast<ssize_t>(sizeof(ask))) {
    return ErrnoStatus(errno, "sock_diag request");
  }
  alignas(nlmsghdr) char buf[8192];
  const ssize_t n = ::recv(nl.get(), buf, sizeof(buf), 0);
  if (n < 0) return ErrnoStatus(errno, "sock_diag reply");
  int len = static_cast<int>(n);
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const int error = -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;
      if (error == ENOENT) return absl::NotFoundError("the peer's socket is gone");
      return ErrnoStatus(error, "sock_diag");
    }
    if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY &&
        h->nlmsg_len >= NLMSG_LENGTH(sizeof(inet_diag_msg))) {
      const auto* msg = reinterpret_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      // A socket in TIME_WAIT, or any other closed one (orphaned: no
      // process holds it, so no inode), has no owner: the kernel reports
      // such as root's.
      if (msg->idiag_state == TCP_TIME_WAIT || msg->idiag_inode == 0) {
        return absl::NotFoundError("the peer closed");
      }
      return static_cast<uid_t>(msg->idiag_uid);
    }
  }
  return absl::InternalError("sock_diag: no answer");
}

absl::Status CheckLoopbackPeerLookup(int family, const PeerUidLookup& lookup) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (family == AF_INET) {
    auto& in4 = reinterpret_cast<sockaddr_in&>(addr);
    in4.sin_family = AF_INET;
    in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(in4);
  } else if (family == AF_INET6) {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(addr);
    in6.sin6_family = AF_INET6;
    in6.sin6_addr = in6addr_loopback;
    len = sizeof(in6);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("address family ", family, " is not TCP's"));
  }
  // A connection of its own to look up (e.g. SocketBindDeny= may refuse
  // the port): FAILED_PRECONDITION, the check could not be made.
  auto cannot_check = [](absl::string_view what) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot check: ", what, ": ", std::strerror(errno)));
  };
  UniqueFd listener(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return cannot_check("socket");
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return cannot_check("a loopback listener of its own");
  }
  UniqueFd mine(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!mine || ::connect(mine.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return cannot_check("connecting to a loopback listener of its own");
  }
  UniqueFd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!accepted) return cannot_check("accept4");
  absl::StatusOr<uid_t> uid = lookup(accepted.get());
  if (!uid.ok()) return uid.status();
  if (*uid != ::geteuid()) {
    return absl::InternalError(absl::StrCat("a connection of this process's (uid ", ::geteuid(),
                                            ") was named uid ", *uid, "'s"));
  }
  return absl::OkStatus();
}

}  // namespace halloc
