// A real hallocd binary in a child process, for tests that attack it, kill
// it or load it: sockets in a directory of the test's, its stderr in a log
// the test can read, SIGKILLed when the test is done (or dies: it gets
// PR_SET_PDEATHSIG). Start it again on the same directory to restart it over
// its stale sockets.
#ifndef HALLOC_TESTS_INTEGRATION_HALLOCD_PROCESS_H_
#define HALLOC_TESTS_INTEGRATION_HALLOCD_PROCESS_H_

#include <sys/resource.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::testing {

// `path` in this test's runfiles.
std::string Runfile(const std::string& path);

class HallocdProcess {
 public:
  struct Options {
    // Policy text (written next to the sockets); empty: the built-in default.
    std::string policy;
    // RLIMIT_NOFILE, soft and hard, for hallocd; 0: inherit.
    rlim_t nofile = 0;
    // More flags (e.g. "--backend=memfd"). Sockets are 0666, so that peers
    // of other uids reach them (the policy decides what they may do).
    std::vector<std::string> flags;
  };

  // Starts hallocd with sockets dir/control.sock and dir/broker.sock and
  // returns once its broker accepts.
  static absl::StatusOr<std::unique_ptr<HallocdProcess>> Start(const std::string& dir,
                                                                Options options);
  ~HallocdProcess();  // Kill()

  pid_t pid() const { return process_.pid(); }
  const ConnectOptions& connect_options() const { return opts_; }
  // Everything it logged so far.
  std::string Log() const;
  // SIGKILL, and waits for it. Idempotent.
  void Kill();

  // Of the running process: open fds, threads, resident KiB (-1: gone, or
  // its /proc files closed to this process).
  int Fds() const;
  // Its open fds, one "N -> what it is" line each (for a failure message:
  // which fd is left over).
  std::string FdTable() const;
  int Threads() const;
  long RssKib() const;
  // The most hallocd's resident set has been so far (VmHWM), in KiB.
  long PeakRssKib() const;

 private:
  HallocdProcess() = default;
  Subprocess process_;
  ConnectOptions opts_;
  std::string log_;
};

}  // namespace halloc::testing

#endif  // HALLOC_TESTS_INTEGRATION_HALLOCD_PROCESS_H_
