#include "tests/bench/child.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::bench {

absl::StatusOr<Child> Child::Spawn(const std::vector<std::string>& argv,
                                   const std::string& stderr_path) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd in_r(in[0]), in_w(in[1]);
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd out_r(out[0]), out_w(out[1]);
  UniqueFd err;
  if (!stderr_path.empty()) {
    err.reset(::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!err) return ErrnoStatus(errno, "open " + stderr_path);
  }
  SpawnOptions o;
  o.argv = argv;
  o.stdin_fd = in_r.get();
  o.stdout_fd = out_w.get();
  o.stderr_fd = err.get();
  ASSIGN_OR_RETURN(Subprocess process, Subprocess::Spawn(o));
  return Child(std::move(process), std::move(in_w), std::move(out_r));
}

absl::StatusOr<std::string> Child::ReadLine() {
  for (;;) {
    const size_t nl = buffered_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    char chunk[4096];
    const ssize_t n = ::read(out_.get(), chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "read from worker");
    if (n == 0) return absl::UnavailableError("worker closed its stdout");
    buffered_.append(chunk, n);
  }
}

std::map<std::string, double> Child::ReadValues() {
  std::map<std::string, double> values;
  for (;;) {
    absl::StatusOr<std::string> line = ReadLine();
    if (!line.ok()) return values;
    std::istringstream in(*line);
    std::string key;
    double value;
    if (in >> key >> value) values[key] = value;
  }
}

void Child::Say(const std::string& line) {
  const std::string text = line + "\n";
  if (in_ && ::write(in_.get(), text.data(), text.size()) < 0) {
    // The worker died; its missing results say so.
  }
}

int Child::Wait() { return *process_.Wait(); }

}  // namespace halloc::bench
