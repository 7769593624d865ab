// A worker or server process started with fork+exec (never a bare fork: a
// forked gRPC process hangs), with pipes on its stdin and stdout. It dies
// with the driver (Subprocess: PR_SET_PDEATHSIG).
#ifndef HALLOC_TESTS_BENCH_CHILD_H_
#define HALLOC_TESTS_BENCH_CHILD_H_

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::bench {

class Child {
 public:
  // Runs argv[0] with `argv`. stderr goes to `stderr_path` (appended) when
  // given, else it is inherited.
  static absl::StatusOr<Child> Spawn(const std::vector<std::string>& argv,
                                     const std::string& stderr_path = "");
  Child(Child&& other) = default;
  Child& operator=(Child&&) = delete;
  // Destroying it SIGKILLs and reaps a child still running.

  pid_t pid() const { return process_.pid(); }
  // One line of stdout, without the newline. UNAVAILABLE at EOF.
  absl::StatusOr<std::string> ReadLine();
  // Every remaining "key value" line of stdout, until EOF.
  std::map<std::string, double> ReadValues();
  // Writes one line to its stdin.
  void Say(const std::string& line);
  void CloseStdin() { in_.reset(); }
  // Reaps it; its exit status as waitpid reports it.
  int Wait();
  void Signal(int sig) { process_.Signal(sig); }

 private:
  Child(Subprocess process, UniqueFd in, UniqueFd out)
      : process_(std::move(process)), in_(std::move(in)), out_(std::move(out)) {}
  Subprocess process_;
  UniqueFd in_, out_;
  std::string buffered_;
};

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_CHILD_H_
