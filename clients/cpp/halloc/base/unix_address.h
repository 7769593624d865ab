// The sockaddr_un of a Unix socket path, shared by hallocd (bind) and its
// clients (connect).
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_

#include <sys/socket.h>
#include <sys/un.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// INVALID_ARGUMENT when `path` is empty or too long for sun_path.
absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path);

// Connects a close-on-exec Unix socket of `type` (SOCK_STREAM,
// SOCK_SEQPACKET) to `path`, waiting at most `timeout` for room in the
// listener's backlog: a daemon that does not accept, or a backlog other
// processes keep full (any local user can, connecting and closing in a
// loop faster than a daemon accepts: a non-blocking connect then fails at
// once, EAGAIN). Past it DEADLINE_EXCEEDED; errors name `what` (e.g.
// "hallocd broker"). The socket is returned blocking.
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type, absl::Duration timeout,
                                     absl::string_view what);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_
