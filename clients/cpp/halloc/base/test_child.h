// Children of a test that run code of the test's own binary. A test that
// needs another process acting as a client (another uid, a client killed
// mid-protocol, a flood) writes that process's code as a child main,
// registered by name, and starts it with TestChild::Spawn: fork and exec of
// this very binary, which runs the named main instead of the tests.
//
// Never a bare fork() running test code: the test process has threads
// (gRPC's, once it made a channel), and a forked copy of a threaded process
// may make only async-signal-safe calls; one that allocates can hang on a
// lock another thread held at the fork (ASan's allocator takes no lock
// across fork). Link the test with :test_child_main instead of gtest_main.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_TEST_CHILD_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_TEST_CHILD_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::testing {

// A child's code: `args` as given to Spawn, `report` the write end of the
// pipe the parent reads lines from. Its result is the exit status.
using ChildMain = int (*)(absl::Span<const std::string> args, int report);

// Registers `main` under `name` (at static initialization, see
// HALLOC_TEST_CHILD); aborts if the name was taken.
bool RegisterChildMain(const char* name, ChildMain main);

#define HALLOC_TEST_CHILD(name, function)                           \
  [[maybe_unused]] static const bool halloc_test_child_##function = \
      ::halloc::testing::RegisterChildMain(name, function)

// The argv that runs the child main `name` with `args`, reporting to fd
// `report` (-1: none), for a caller that starts the process itself (clone3
// with a chosen pid, say) and must exec it at once. INVALID_ARGUMENT for
// an unknown name.
absl::StatusOr<std::vector<std::string>> ChildArgv(const std::string& name,
                                                   std::vector<std::string> args, int report);

// In main(): if this process was started as a child (argv from Spawn), runs
// that child's main and returns its status; nullopt for a normal start.
std::optional<int> RunChildIfAsked(int argc, char** argv);

class TestChild {
 public:
  // Starts the child main `name` with `args`. It keeps `keep_fds` (at the
  // same numbers), is SIGKILLed when the spawning thread exits and after
  // 30 s whatever happens, and gets SIGKILL and is reaped when this object
  // goes.
  static absl::StatusOr<TestChild> Spawn(const std::string& name,
                                         std::vector<std::string> args = {},
                                         std::vector<int> keep_fds = {});

  pid_t pid() const { return process_.pid(); }
  // One line the child wrote (without its '\n') within `timeout`; nullopt
  // on timeout or once the child closed its end.
  std::optional<std::string> Line(absl::Duration timeout = absl::Seconds(10));
  // Waits (at most `timeout`) for it to exit: its wait status, or nullopt.
  std::optional<int> Wait(absl::Duration timeout = absl::Seconds(10));
  // SIGKILL, reaped.
  void Kill();

 private:
  Subprocess process_;
  UniqueFd report_;  // the parent's end
  std::string buffer_;
};

// Reads one '\n'-terminated line from `fd` (a pipe) within `timeout`, the
// bytes after it kept in `buffer` for the next call; nullopt on timeout or
// EOF (then *eof says which).
std::optional<std::string> ReadLine(int fd, std::string* buffer, absl::Duration timeout,
                                    bool* eof = nullptr);
// Writes all of `s` (a line for the parent, say); gives up on an error.
void WriteAll(int fd, const std::string& s);

}  // namespace halloc::testing

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_TEST_CHILD_H_
