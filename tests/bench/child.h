// A worker or server process started with fork+exec (never a bare fork: a
// forked gRPC process hangs), with pipes on its stdin and stdout.
#ifndef HALLOC_TESTS_BENCH_CHILD_H_
#define HALLOC_TESTS_BENCH_CHILD_H_

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::bench {

class Child {
 public:
  // Runs argv[0] with `argv`. stderr goes to `stderr_path` (appended) when
  // given, else it is inherited.
  static absl::StatusOr<Child> Spawn(const std::vector<std::string>& argv,
                                     const std::string& stderr_path = "");
  Child(Child&& other) noexcept;
  Child& operator=(Child&&) = delete;
  ~Child();  // SIGKILLs and reaps a child still running

  pid_t pid() const { return pid_; }
  // One line of stdout, without the newline. UNAVAILABLE at EOF.
  absl::StatusOr<std::string> ReadLine();
  // Every remaining "key value" line of stdout, until EOF.
  std::map<std::string, double> ReadValues();
  // Writes one line to its stdin.
  void Say(const std::string& line);
  void CloseStdin() { in_.reset(); }
  // Reaps it; its exit status as waitpid reports it.
  int Wait();
  void Signal(int sig);

 private:
  Child(pid_t pid, UniqueFd in, UniqueFd out)
      : pid_(pid), in_(std::move(in)), out_(std::move(out)) {}
  pid_t pid_;
  UniqueFd in_, out_;
  std::string buffered_;
};

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_CHILD_H_
