#include "tests/bench/child.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "clients/cpp/halloc/base/os_error.h"

namespace halloc::bench {

absl::StatusOr<Child> Child::Spawn(const std::vector<std::string>& argv,
                                   const std::string& stderr_path) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd in_r(in[0]), in_w(in[1]);
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd out_r(out[0]), out_w(out[1]);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus(errno, "fork");
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    ::dup2(in_r.get(), STDIN_FILENO);
    ::dup2(out_w.get(), STDOUT_FILENO);
    if (!stderr_path.empty()) {
      const int err = ::open(stderr_path.c_str(),
                             O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (err >= 0) ::dup2(err, STDERR_FILENO);
    }
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return Child(pid, std::move(in_w), std::move(out_r));
}

Child::Child(Child&& other) noexcept
    : pid_(other.pid_), in_(std::move(other.in_)), out_(std::move(other.out_)),
      buffered_(std::move(other.buffered_)) {
  other.pid_ = -1;
}

Child::~Child() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    Wait();
  }
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

int Child::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return status;
}

void Child::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

}  // namespace halloc::bench
