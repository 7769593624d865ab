// For tests of what hallocd does with another uid's connections: work done
// by one thread of this process with that effective uid, the rest of the
// process keeping its own. SO_PEERCRED takes the connecting thread's
// credentials, and the raw setresuid system call (not glibc's, which
// changes every thread) changes only the caller's. The process must be
// root, outside a user namespace that maps only its own uid (Bazel's
// sandbox): tests using it are tagged no-sandbox, and skip on
// UNIMPLEMENTED (the uid could not be taken).
#ifndef HALLOC_SERVICE_CONNECT_AS_TESTING_H_
#define HALLOC_SERVICE_CONNECT_AS_TESTING_H_

#include <errno.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"

namespace halloc::testing {

// `fn()` (returning an absl::StatusOr) run on a thread of effective uid
// `euid`; UNIMPLEMENTED when this process cannot take that uid. `fn` must
// start no thread (one would keep the uid).
template <typename F>
std::invoke_result_t<F> RunAs(uid_t euid, F fn) {
  std::optional<std::invoke_result_t<F>> out;
  // An euid change clears the process's dumpable flag (no core, /proc/self
  // root's only): put back once done.
  const int dumpable = ::prctl(PR_GET_DUMPABLE);
  std::thread([&] {
    if (::syscall(SYS_setresuid, -1, euid, -1) != 0) {
      out = absl::UnimplementedError(
          absl::StrCat("cannot take uid ", euid, ": setresuid: ", std::strerror(errno)));
      return;
    }
    out = fn();
    (void)::syscall(SYS_setresuid, -1, ::getuid(), -1);
  }).join();
  if (dumpable >= 0) (void)::prctl(PR_SET_DUMPABLE, dumpable);
  return *std::move(out);
}

// A connection of `type` to the socket at `path` made with effective uid
// `euid` (the socket file must let that uid connect).
inline absl::StatusOr<UniqueFd> ConnectAs(uid_t euid, const std::string& path, int type) {
  return RunAs(euid, [&]() -> absl::StatusOr<UniqueFd> {
    return ConnectUnix(path, type, absl::Seconds(5), "test socket");
  });
}

}  // namespace halloc::testing

#endif  // HALLOC_SERVICE_CONNECT_AS_TESTING_H_
