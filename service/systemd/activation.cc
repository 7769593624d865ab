#include "service/systemd/activation.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc {
namespace {

std::string TypeName(int type) {
  switch (type) {
    case SOCK_STREAM: return "SOCK_STREAM";
    case SOCK_SEQPACKET: return "SOCK_SEQPACKET";
    case SOCK_DGRAM: return "SOCK_DGRAM";
    default: return absl::StrCat("type ", type);
  }
}

// What `fd` is, for an error message: "a listening SOCK_STREAM socket of
// family 2", "not a socket", ...
std::string Describe(int fd) {
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return errno == ENOTSOCK ? "not a socket" : std::strerror(errno);
  }
  len = sizeof(int);
  (void)::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof(int);
  (void)::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  return absl::StrCat(listening ? "a listening " : "a non-listening ", TypeName(type),
                      domain == AF_UNIX ? " Unix socket"
                                        : absl::StrCat(" socket of family ", domain));
}

// Checks that `fd` (passed as `name`) is a listening Unix socket of `type`.
absl::Status Check(int fd, const std::string& name, int type, const char* directive) {
  const int r = sd_is_socket_unix(fd, type, /*listening=*/1, nullptr, 0);
  if (r > 0) return absl::OkStatus();
  if (r < 0) return ErrnoStatus(-r, absl::StrCat("sd_is_socket_unix(fd ", fd, ")"));
  return absl::FailedPreconditionError(absl::StrCat(
      "socket activation: the socket named '", name, "' (fd ", fd, ") is ", Describe(fd),
      ", but hallocd needs a listening ", TypeName(type), " Unix socket there (", directive,
      "= in its socket unit)"));
}

// Clients (libhalloc, hallocctl) and the watchdog's probe reach hallocd by
// path: an abstract or unnamed socket would serve nobody.
absl::Status RequirePath(const std::string& path, const char* name) {
  if (!path.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "socket activation: the socket named '", name,
      "' is not bound to a filesystem path (abstract or unnamed); hallocd's clients "
      "connect by path"));
}

// The strv sd_listen_fds_with_names() returns, freed on scope exit.
struct Names {
  char** v = nullptr;
  ~Names() {
    if (v == nullptr) return;
    for (char** p = v; *p != nullptr; ++p) std::free(*p);
    std::free(v);
  }
};

}  // namespace

absl::StatusOr<std::string> UnixSocketPath(int fd) {
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus(errno, "getsockname");
  }
  const size_t base = offsetof(sockaddr_un, sun_path);
  if (addr.sun_family != AF_UNIX || len <= base || addr.sun_path[0] == '\0') {
    return std::string();  // unnamed or abstract
  }
  return std::string(addr.sun_path, strnlen(addr.sun_path, len - base));
}

absl::StatusOr<ActivatedSockets> TakeActivatedSockets() {
  Names names;
  const int n = sd_listen_fds_with_names(/*unset_environment=*/1, &names.v);
  if (n < 0) return ErrnoStatus(-n, "sd_listen_fds_with_names");
  // Own every passed fd first, so that each is closed on any error below.
  std::vector<UniqueFd> fds;
  for (int i = 0; i < n; ++i) fds.emplace_back(SD_LISTEN_FDS_START + i);

  ActivatedSockets out;
  for (int i = 0; i < n; ++i) {
    const int fd = SD_LISTEN_FDS_START + i;
    const std::string name = names.v != nullptr && names.v[i] != nullptr ? names.v[i] : "";
    UniqueFd* slot = nullptr;
    if (name == kControlFdName) {
      RETURN_IF_ERROR(Check(fd, name, SOCK_STREAM, "ListenStream"));
      slot = &out.control;
    } else if (name == kBrokerFdName) {
      RETURN_IF_ERROR(Check(fd, name, SOCK_SEQPACKET, "ListenSequentialPacket"));
      slot = &out.broker;
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          "socket activation: fd ", fd, " (", Describe(fd), ") is named '", name,
          "'; hallocd takes only sockets named '", kControlFdName, "' and '", kBrokerFdName,
          "' (FileDescriptorName= in its socket units)"));
    }
    if (*slot) {
      return absl::FailedPreconditionError(absl::StrCat(
          "socket activation: more than one socket is named '", name, "'"));
    }
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return ErrnoStatus(errno, "fcntl(FD_CLOEXEC)");
    *slot = std::move(fds[i]);
  }
  if (out.control) {
    ASSIGN_OR_RETURN(out.control_path, UnixSocketPath(out.control.get()));
    RETURN_IF_ERROR(RequirePath(out.control_path, kControlFdName));
  }
  if (out.broker) {
    ASSIGN_OR_RETURN(out.broker_path, UnixSocketPath(out.broker.get()));
    RETURN_IF_ERROR(RequirePath(out.broker_path, kBrokerFdName));
  }
  return out;
}

}  // namespace halloc
