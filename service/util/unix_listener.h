// The Unix socket files hallocd listens on: bound with their permissions,
// replacing a stale file that an earlier hallocd left behind, never one a
// live server still owns.
#ifndef HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_
#define HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_

#include <sys/stat.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// Binds and listens on a Unix socket of `type` (SOCK_STREAM, SOCK_SEQPACKET)
// at `path` with permissions `mode`, replacing a stale socket file (one
// nobody listens on). ALREADY_EXISTS when a live server owns the path or a
// file that is not a socket sits there; INVALID_ARGUMENT for a path too long
// for sockaddr_un.
absl::StatusOr<UniqueFd> BindUnixSocket(const std::string& path, int type, mode_t mode);

// Removes a socket file at `path` if nobody listens on it (a stream or a
// seqpacket server); OK when there is nothing at `path`.
absl::Status RemoveStaleSocket(const std::string& path);

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_
