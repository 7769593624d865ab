// What peer_identity's tests share: processes to look at (a sleeper, one
// in a container's user namespace) and a call made with no fd free.
#ifndef HALLOC_SERVICE_PEER_IDENTITY_TESTING_H_
#define HALLOC_SERVICE_PEER_IDENTITY_TESTING_H_

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"

namespace halloc {

// `fn()` with RLIMIT_NOFILE where only `free` more fds can be opened, the
// limit restored after.
template <typename Fn>
auto WithFdsFree(int free, Fn fn) {
  rlimit saved{};
  EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  int limit = 0;  // past the free-th unused fd number
  for (int unused = 0; unused <= free; ++limit) {
    if (::fcntl(limit, F_GETFD) < 0) ++unused;
  }
  rlimit cut = saved;
  cut.rlim_cur = static_cast<rlim_t>(limit - 1);
  EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &cut), 0);
  auto result = fn();
  EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  return result;
}
template <typename Fn>
auto WithNoFdFree(Fn fn) {
  return WithFdsFree(0, fn);
}

// /bin/sleep 30.
absl::StatusOr<Subprocess> Sleeper();

// The pid of the process that `argv` ends as (it execs along, no fork),
// once it runs `bin`; -1 if it never does (or exits first).
pid_t RunningAs(Subprocess& p, const std::string& bin);

// A child of this (root) process in a user namespace of root's (a
// container's) whose uid_map and gid_map this process writes (`map`),
// running as its uid `inside` and, with `nest`, in a namespace of its own
// made as that uid below it (a container's uid that unshared), whose root
// is that uid (it maps itself, as unprivileged tools do). It runs until
// the ContainerProcess goes. (Its child holds no fd of this process's
// but its own two pipes' ends: not another ContainerProcess's.)
class ContainerProcess {
 public:
  enum class Made { kYes, kNoNamespace, kNoNestedNamespace };
  // `nest_later`: it makes its namespace only when Nest() is called.
  // `keep_one_in`: a process of it stays in the container's namespace
  // (this one's parent), the one below it is the one seen here.
  ContainerProcess(const std::string& map, uid_t inside, bool nest = false, bool nest_later = false,
                   bool keep_one_in = false);
  ContainerProcess(const ContainerProcess&) = delete;
  ContainerProcess& operator=(const ContainerProcess&) = delete;
  ~ContainerProcess() { Stop(); }

  // Whether it runs; if not, why (exit_status_: how it ended).
  Made made() const;
  // Why a test of it skips: what made() says cannot be done here; nullopt
  // when it runs or failed otherwise (made() says how).
  std::optional<std::string> WhyNotMade() const;
  // (`nest_later`) Has it make its namespace; whether it did.
  bool Nest();
  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }
  // The (container's) namespace `map` is of, held open.
  int container_namespace() const { return container_namespace_.get(); }

 private:
  void Stop();

  pid_t pid_ = -1;
  pid_t child_ = -1;  // this process's child (pid_, or its parent)
  UniqueFd go_w_, pidfd_, ready_r_;
  bool running_ = false;
  int exit_status_ = -1;
  UniqueFd container_namespace_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_PEER_IDENTITY_TESTING_H_
