// LoopbackPeerUid: whose process is at the other end of a loopback TCP
// connection, asked of the kernel (NETLINK_SOCK_DIAG, as `ss -e` shows it).
//
// A Unix socket says who its peer is (SO_PEERCRED); TCP does not, and on
// loopback the peer's address says nothing either: every local user may
// connect from any of 127.0.0.0/8. The kernel still knows which socket
// holds the other end (the same four-tuple, reversed) and whose it is.
#ifndef HALLOC_SERVICE_METRICS_LOOPBACK_PEER_H_
#define HALLOC_SERVICE_METRICS_LOOPBACK_PEER_H_

#include <sys/types.h>

#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace halloc {

// The uid owning the socket at the other end of `fd`, a connected TCP
// socket over loopback in this network namespace. NOT_FOUND when that
// socket is gone (the peer closed it; a socket in TIME_WAIT has no owner),
// the errno's status when the kernel cannot be asked.
absl::StatusOr<uid_t> LoopbackPeerUid(int fd);

// LoopbackPeerUid, or a stand-in (tests).
using PeerUidLookup = std::function<absl::StatusOr<uid_t>(int fd)>;

// Whether `lookup` can tell whose a loopback TCP connection of `family`
// (AF_INET, AF_INET6) is here: one this process makes to a listener of its
// own must be named as this process's (effective) uid. The error says why
// not: the kernel cannot be asked (a socket(AF_NETLINK) that systemd's
// RestrictAddressFamilies= refuses), or answers every lookup ENOENT, as
// for a socket that is gone (no inet_diag/tcp_diag module, and no loading
// one); FAILED_PRECONDITION "cannot check" when that connection of its
// own could not be made (SocketBindDeny=, say), which says nothing of the
// lookup.
absl::Status CheckLoopbackPeerLookup(int family, const PeerUidLookup& lookup);

}  // namespace halloc

#endif  // HALLOC_SERVICE_METRICS_LOOPBACK_PEER_H_
