// For tests of what hallocd does with another uid's connections: a
// connection made by one thread of this process with that effective uid,
// the rest of the process keeping its own. SO_PEERCRED takes the
// connecting thread's credentials, and the raw setresuid system call (not
// glibc's, which changes every thread) changes only the caller's. The
// process must be root, outside a user namespace that maps only its own
// uid (Bazel's sandbox): tests using it are tagged no-sandbox, and skip
// on PERMISSION_DENIED.
#ifndef HALLOC_SERVICE_CONNECT_AS_TESTING_H_
#define HALLOC_SERVICE_CONNECT_AS_TESTING_H_

#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"

namespace halloc::testing {

// A connection of `type` to the socket at `path` made with effective uid
// `euid` (the socket file must let that uid connect). PERMISSION_DENIED
// when this process cannot take that uid.
inline absl::StatusOr<UniqueFd> ConnectAs(uid_t euid, const std::string& path, int type) {
  absl::StatusOr<UniqueFd> out = absl::InternalError("not run");
  std::thread([&] {
    if (::syscall(SYS_setresuid, -1, euid, -1) != 0) {
      out = absl::PermissionDeniedError(
          absl::StrCat("setresuid(-1, ", euid, ", -1): ", std::strerror(errno)));
      return;
    }
    out = ConnectUnix(path, type, absl::Seconds(5), "test socket");
    // Back to the process's own, so the thread ends as it began.
    (void)::syscall(SYS_setresuid, -1, ::getuid(), -1);
  }).join();
  return out;
}

}  // namespace halloc::testing

#endif  // HALLOC_SERVICE_CONNECT_AS_TESTING_H_
