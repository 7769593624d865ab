// The sockaddr_un of a Unix socket path, shared by hallocd (bind) and its
// clients (connect).
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_

#include <sys/socket.h>
#include <sys/un.h>

#include <string>

#include "absl/status/statusor.h"

namespace halloc {

// INVALID_ARGUMENT when `path` is empty or too long for sun_path.
absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIX_ADDRESS_H_
