#include "service/peer_identity_testing.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace halloc {

absl::StatusOr<Subprocess> Sleeper() { return Subprocess::Spawn({.argv = {"/bin/sleep", "30"}}); }

pid_t RunningAs(Subprocess& p, const std::string& bin) {
  for (int i = 0; i < 500; ++i) {
    if (p.Wait(absl::ZeroDuration()).has_value()) return -1;
    std::error_code ec;
    if (std::filesystem::read_symlink(absl::StrCat("/proc/", p.pid(), "/exe"), ec) == bin) {
      return p.pid();
    }
    ::usleep(10 * 1000);
  }
  return -1;
}

ContainerProcess::ContainerProcess(const std::string& map, uid_t inside, bool nest, bool nest_later,
                                   bool keep_one_in) {
  const std::string self_map = absl::StrCat("0 ", inside, " 1\n");
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) return;
  UniqueFd ready_r(ready[0]), ready_w(ready[1]), go_r(go[0]);
  go_w_ = UniqueFd(go[1]);
  pid_ = child_ = ::fork();
  if (pid_ == 0) {  // syscalls only
    char c = 0;
    // Its own pipes' ends only: another ContainerProcess's go_w_ held
    // here would keep that one's child from seeing its end, and this
    // one's from seeing the parent's close.
    const int kReady = ::fcntl(ready_w.get(), F_DUPFD, 3);
    const int kGo = kReady < 0 ? -1 : ::fcntl(go_r.get(), F_DUPFD, kReady + 1);
    if (kGo < 0 || ::close_range(3, kReady - 1, 0) != 0 ||
        (kGo > kReady + 1 && ::close_range(kReady + 1, kGo - 1, 0) != 0) ||
        ::close_range(kGo + 1, ~0U, 0) != 0) {
      ::_exit(7);
    }
    if (::unshare(CLONE_NEWUSER) != 0) ::_exit(1);
    if (::write(kReady, "u", 1) != 1 || ::read(kGo, &c, 1) != 1 || c != 'g') ::_exit(2);
    if (::setresgid(inside, inside, inside) != 0 || ::setresuid(inside, inside, inside) != 0) {
      ::_exit(3);
    }
    if (nest && keep_one_in) {
      const pid_t inner = ::fork();
      if (inner < 0) ::_exit(9);
      if (inner > 0) {  // stays in the container's namespace
        ::close(kReady);
        while (::read(kGo, &c, 1) > 0) {
        }
        int status = 0;
        if (::waitpid(inner, &status, 0) != inner) ::_exit(10);
        ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 10);
      }
    }
    if (nest && nest_later &&
        (::write(kReady, "d", 1) != 1 || ::read(kGo, &c, 1) != 1 || c != 'h')) {
      ::_exit(8);
    }
    if (nest && ::unshare(CLONE_NEWUSER) != 0) ::_exit(4);
    if (nest) {
      // The uid change made it undumpable: its /proc files root's.
      if (::prctl(PR_SET_DUMPABLE, 1) != 0) ::_exit(6);
      const int f = ::open("/proc/self/uid_map", O_WRONLY | O_CLOEXEC);
      if (f < 0 ||
          ::write(f, self_map.data(), self_map.size()) != static_cast<ssize_t>(self_map.size())) {
        ::_exit(6);
      }
      ::close(f);
    }
    if (nest && keep_one_in) {  // which process to look at: this one
      const pid_t me = ::getpid();
      if (::write(kReady, &me, sizeof(me)) != sizeof(me)) ::_exit(5);
    }
    if (::write(kReady, "n", 1) != 1) ::_exit(5);
    ::read(kGo, &c, 1);  // until the parent closes its end
    ::_exit(0);
  }
  if (child_ < 0) return;
  ready_w.reset();
  char c = 0;
  if (::read(ready_r.get(), &c, 1) != 1 || c != 'u') {  // it exited: nothing to write to
    Stop();
    return;
  }
  const auto write_map = [this](const std::string& text) {
    bool written = true;
    for (const char* file : {"uid_map", "gid_map"}) {
      std::ofstream f(absl::StrCat("/proc/", pid_, "/", file));
      f << text;
      f.close();
      written = written && f.good();
    }
    return written;
  };
  container_namespace_ =
      UniqueFd(::open(absl::StrCat("/proc/", pid_, "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
  const bool mapped = write_map(map);
  running_ = ::write(go_w_.get(), mapped ? "g" : "x", 1) == 1 && mapped;
  if (running_ && nest && keep_one_in) {
    pid_t inner = -1;
    running_ = ::read(ready_r.get(), &inner, sizeof(inner)) == sizeof(inner) && inner > 0;
    pid_ = inner;
  }
  running_ = running_ && ::read(ready_r.get(), &c, 1) == 1 && c == (nest && nest_later ? 'd' : 'n');
  if (nest && nest_later) ready_r_ = std::move(ready_r);
  if (running_) pidfd_ = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  if (!running_ || !pidfd_) Stop();
}

ContainerProcess::Made ContainerProcess::made() const {
  if (running_) return Made::kYes;
  const bool exited = WIFEXITED(exit_status_);
  if (exited && WEXITSTATUS(exit_status_) == 1) return Made::kNoNamespace;
  if (exited && WEXITSTATUS(exit_status_) == 4) return Made::kNoNestedNamespace;
  ADD_FAILURE() << "the container's process failed: status " << exit_status_;
  return Made::kNoNamespace;
}

std::optional<std::string> ContainerProcess::WhyNotMade() const {
  if (running_ || !WIFEXITED(exit_status_)) return std::nullopt;
  switch (WEXITSTATUS(exit_status_)) {
    case 1:
      return "unshare(CLONE_NEWUSER) failed here (user namespaces disabled?)";
    case 4:
      return "a container's uid may not make a user namespace here (an LSM refused it)";
    default:
      return std::nullopt;
  }
}

void ContainerProcess::Stop() {
  go_w_.reset();
  if (child_ > 0) ::waitpid(child_, &exit_status_, 0);
  pid_ = child_ = -1;
  running_ = false;
}

bool ContainerProcess::Nest() {
  char c = 0;
  return running_ && ready_r_ && ::write(go_w_.get(), "h", 1) == 1 &&
         ::read(ready_r_.get(), &c, 1) == 1 && c == 'n';
}

}  // namespace halloc
