// Socket activation: the listening sockets systemd hands hallocd
// (sd_listen_fds(3)), taken by the names its socket units give them.
//
//   hallocd.socket          ListenStream=/run/halloc/control.sock
//                           FileDescriptorName=control
//   hallocd-broker.socket   ListenSequentialPacket=/run/halloc/broker.sock
//                           FileDescriptorName=broker
//
// (FileDescriptorName= names every socket of its unit, hence two units.)
// Either socket may be absent: hallocd binds that one itself, as without
// systemd.
#ifndef HALLOC_SERVICE_SYSTEMD_ACTIVATION_H_
#define HALLOC_SERVICE_SYSTEMD_ACTIVATION_H_

#include <string>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

inline constexpr char kControlFdName[] = "control";
inline constexpr char kBrokerFdName[] = "broker";

struct ActivatedSockets {
  UniqueFd control;          // a listening SOCK_STREAM Unix socket, or none
  std::string control_path;  // the filesystem path it is bound to
  UniqueFd broker;           // a listening SOCK_SEQPACKET Unix socket, or none
  std::string broker_path;
};

// Takes the sockets passed through LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES and
// unsets those variables; none passed (or passed to another pid): both
// empty. Each socket must be a listening Unix socket of its type, and every
// passed fd must be one of the two names, once: anything else is
// FAILED_PRECONDITION saying which fd, what it is and what was expected
// (all passed fds are closed then), as is a socket bound to no filesystem
// path (clients connect by path). The taken fds are made close-on-exec.
absl::StatusOr<ActivatedSockets> TakeActivatedSockets();

// The filesystem path a Unix socket is bound to; empty for an abstract or
// unnamed one.
absl::StatusOr<std::string> UnixSocketPath(int fd);

}  // namespace halloc

#endif  // HALLOC_SERVICE_SYSTEMD_ACTIVATION_H_
