// Subprocess: one child process started with fork+exec, owned until it is
// reaped. The one place halloc's tools, demos and tests start programs
// (weston, the demo's viewer, hallocd under test, bench workers,
// systemd-socket-activate).
//
// The child starts with every signal at its default action and none
// blocked, whatever this process ignores or the spawning thread blocks.
//
// Between fork and exec the child makes only async-signal-safe system calls
// (the parent may have threads: gRPC's, a test's): argv, the environment and
// every file are prepared before fork. A child that cannot exec (missing or
// not executable binary, bad working directory, refused rlimit) makes
// Spawn() fail with that errno instead of leaving a child that exits 127.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_SUBPROCESS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_SUBPROCESS_H_

#include <sys/resource.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace halloc {

struct SpawnOptions {
  // argv[0] is the program's path (not searched in PATH).
  std::vector<std::string> argv = {};
  // The child's whole environment ("NAME=value"); nullopt: the parent's.
  std::optional<std::vector<std::string>> env = std::nullopt;
  // The child's working directory; empty: the parent's.
  std::string cwd = "";
  // Fds that become the child's stdin, stdout and stderr; -1 keeps the
  // parent's. Must be > 2 (or the very fd they replace).
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Fds the child keeps, at the same numbers, across exec (their
  // close-on-exec flag is cleared in the child only). Must be > 2.
  std::vector<int> keep_fds = {};
  // The child's RLIMIT_NOFILE (soft and hard); 0 keeps the parent's.
  rlim_t nofile = 0;
  // The child is SIGKILLed when the *thread* that spawned it exits
  // (PR_SET_PDEATHSIG), so a crashed test or tool leaves nothing behind.
  bool die_with_parent = true;
};

// The parent's environment without the variables named in `unset` or set
// by `set`, followed by `set` ("NAME=value" each).
std::vector<std::string> EnvironmentWith(absl::Span<const std::string> set,
                                         absl::Span<const std::string> unset = {});

class Subprocess {
 public:
  // Starts argv[0]. INVALID_ARGUMENT for an empty argv or a bad fd; the
  // exec's own error otherwise (NOT_FOUND for a missing binary,
  // PERMISSION_DENIED for one not executable), the child already reaped.
  static absl::StatusOr<Subprocess> Spawn(const SpawnOptions& options);

  Subprocess() = default;  // no child
  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&& other) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();  // SIGKILLs and reaps a child not reaped yet

  // -1 once reaped.
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Sends `sig`: false if it cannot (reaped, or kill(2) failed).
  bool Signal(int sig) const;

  // Reaps the child once it exits: its wait status (as waitpid(2) reports
  // it), or nullopt if it still runs after `timeout`. Reaped already: -1.
  std::optional<int> Wait(absl::Duration timeout = absl::InfiniteDuration());
  // SIGTERM, SIGKILL if it still runs after `grace`, reaped: its status.
  int Stop(absl::Duration grace);

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  void Kill();

  pid_t pid_ = -1;
};

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_SUBPROCESS_H_
