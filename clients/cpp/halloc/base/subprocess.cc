#include "clients/cpp/halloc/base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"

extern char** environ;

namespace halloc {
namespace {

// What the child failed to do before exec, written to the parent over a
// close-on-exec pipe (an exec that succeeds closes it with nothing written).
enum Stage : int { kSignals = 1, kPrctl, kRlimit, kChdir, kDup, kKeep, kExec };

struct ChildError {
  int stage;
  int err;
};

const char* StageName(int stage) {
  switch (stage) {
    case kSignals: return "sigprocmask";
    case kPrctl: return "prctl(PR_SET_PDEATHSIG)";
    case kRlimit: return "setrlimit(RLIMIT_NOFILE)";
    case kChdir: return "chdir";
    case kDup: return "dup2";
    case kKeep: return "fcntl(F_SETFD)";
    default: return "exec";
  }
}

// In the child: reports `stage` and errno, then exits. Async-signal-safe.
[[noreturn]] void Fail(int report, int stage) {
  const ChildError e{stage, errno};
  ssize_t r;
  do {
    r = ::write(report, &e, sizeof(e));
  } while (r < 0 && errno == EINTR);
  ::_exit(127);
}

// In the child: makes `from` the child's fd `to`, kept across exec.
bool Install(int from, int to) {
  if (from < 0) return true;
  if (from == to) return ::fcntl(to, F_SETFD, 0) == 0;
  return ::dup2(from, to) == to;
}

absl::Status CheckStdFd(int fd, int target, const char* name) {
  if (fd < 0 || fd == target || fd > STDERR_FILENO) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("spawn: ", name, " fd ", fd, " is another standard stream"));
}

}  // namespace

std::vector<std::string> EnvironmentWith(absl::Span<const std::string> set,
                                         absl::Span<const std::string> unset) {
  absl::flat_hash_set<std::string> drop(unset.begin(), unset.end());
  for (const std::string& kv : set) drop.insert(kv.substr(0, kv.find('=')));
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string kv(*e);
    if (!drop.contains(kv.substr(0, kv.find('=')))) env.push_back(kv);
  }
  env.insert(env.end(), set.begin(), set.end());
  return env;
}

absl::StatusOr<Subprocess> Subprocess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("spawn: empty argv");
  for (auto [fd, target, name] : {std::tuple{options.stdin_fd, 0, "stdin"},
                                  std::tuple{options.stdout_fd, 1, "stdout"},
                                  std::tuple{options.stderr_fd, 2, "stderr"}}) {
    if (absl::Status s = CheckStdFd(fd, target, name); !s.ok()) return s;
  }
  for (int fd : options.keep_fds) {
    if (fd <= STDERR_FILENO) {
      return absl::InvalidArgumentError(absl::StrCat("spawn: cannot keep fd ", fd));
    }
  }
  // Everything the child touches is built here, before fork.
  std::vector<char*> argv;
  for (const std::string& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env) {
    for (const std::string& e : *options.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  char* const* const child_env = options.env ? envp.data() : environ;
  const char* const cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  const rlimit nofile{options.nofile, options.nofile};
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) return ErrnoStatus(errno, "spawn: pipe2");
  UniqueFd report_r(report[0]), report_w(report[1]);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus(errno, "spawn: fork");
  if (pid == 0) {
    const int w = report_w.get();
    // Every signal at its default action and none blocked: exec keeps what
    // this process ignores (a test's SIG_IGN for SIGPIPE) and the spawning
    // thread's mask (a thread that blocks SIGTERM to sigwait for it), and
    // the child would inherit both. By the raw system call, because glibc's
    // sigaction refuses its own signals (32, 33), which a parent may have
    // ignored too; all zeros is SIG_DFL, no flags and an empty mask in any
    // architecture's struct layout.
    const uint64_t dfl[8] = {};
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      ::syscall(SYS_rt_sigaction, sig, dfl, nullptr, sizeof(uint64_t));
    }
    sigset_t none;
    sigemptyset(&none);
    if (::sigprocmask(SIG_SETMASK, &none, nullptr) != 0) Fail(w, kSignals);
    if (options.die_with_parent) {
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) Fail(w, kPrctl);
      // The parent died before prctl took effect: nobody to wait for us.
      if (::getppid() != parent) ::_exit(127);
    }
    if (options.nofile != 0 && ::setrlimit(RLIMIT_NOFILE, &nofile) != 0) Fail(w, kRlimit);
    if (cwd != nullptr && ::chdir(cwd) != 0) Fail(w, kChdir);
    if (!Install(options.stdin_fd, STDIN_FILENO) ||
        !Install(options.stdout_fd, STDOUT_FILENO) ||
        !Install(options.stderr_fd, STDERR_FILENO)) {
      Fail(w, kDup);
    }
    for (int fd : options.keep_fds) {
      if (::fcntl(fd, F_SETFD, 0) != 0) Fail(w, kKeep);
    }
    ::execve(argv[0], argv.data(), child_env);
    Fail(w, kExec);
  }

  Subprocess child(pid);
  report_w.reset();
  ChildError e{};
  ssize_t n;
  do {
    n = ::read(report_r.get(), &e, sizeof(e));
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof(e))) return child;  // exec'd
  child.Wait();
  return ErrnoStatus(e.err, absl::StrCat("spawn ", options.argv[0], ": ", StageName(e.stage)));
}

Subprocess::Subprocess(Subprocess&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

Subprocess::~Subprocess() { Kill(); }

void Subprocess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  Wait();
}

bool Subprocess::Signal(int sig) const { return pid_ > 0 && ::kill(pid_, sig) == 0; }

std::optional<int> Subprocess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  const bool forever = timeout == absl::InfiniteDuration();
  const absl::Time deadline = absl::Now() + timeout;
  // Opened only once there is time to wait (not for a zero-timeout look):
  // a pidfd becomes readable when the child exits, so no polling loop
  // (Linux 5.3+); without one, look every few milliseconds.
  UniqueFd pidfd;
  bool pidfd_tried = false;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, forever ? 0 : WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return status;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {  // not our child (any more): nothing left to reap
      pid_ = -1;
      return -1;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return std::nullopt;
    if (!pidfd_tried) {
      pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
      pidfd_tried = true;
    }
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      const int ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, std::numeric_limits<int>::max()));
      (void)::poll(&p, 1, ms);
    } else {
      absl::SleepFor(std::min(left, absl::Milliseconds(5)));
    }
  }
}

int Subprocess::Stop(absl::Duration grace) {
  if (pid_ <= 0) return -1;
  Signal(SIGTERM);
  if (std::optional<int> status = Wait(grace)) return *status;
  Signal(SIGKILL);
  return *Wait();
}

}  // namespace halloc
