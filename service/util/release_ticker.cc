#include "service/util/release_ticker.h"

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

#include "clients/cpp/halloc/base/os_error.h"

namespace halloc {
namespace {

void Ignore(int) {}

// The handler, once per process: without SA_RESTART, so that a wait the
// tick interrupts is not simply begun again.
absl::Status InstallHandler() {
  static std::once_flag once;
  static int error = 0;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = Ignore;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    if (::sigaction(ReleaseTicker::Signal(), &sa, nullptr) != 0) error = errno;
  });
  return error == 0 ? absl::OkStatus() : ErrnoStatus(error, "sigaction");
}

}  // namespace

int ReleaseTicker::Signal() { return SIGRTMIN + 2; }

absl::StatusOr<std::unique_ptr<ReleaseTicker>> ReleaseTicker::ForThisThread(
    absl::Duration every) {
  if (absl::Status s = InstallHandler(); !s.ok()) return s;
  // The signal may be blocked where this thread was started from (gRPC's
  // threads, a test's): this thread takes it.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, Signal());
  if (int e = ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr); e != 0) {
    return ErrnoStatus(e, "pthread_sigmask");
  }
  struct sigevent ev {};
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = Signal();
  ev._sigev_un._tid = static_cast<pid_t>(::syscall(SYS_gettid));
  timer_t timer;
  if (::timer_create(CLOCK_MONOTONIC, &ev, &timer) != 0) {
    return ErrnoStatus(errno, "timer_create");
  }
  return std::unique_ptr<ReleaseTicker>(new ReleaseTicker(timer, every));
}

ReleaseTicker::~ReleaseTicker() { ::timer_delete(timer_); }

void ReleaseTicker::Set(bool on) {
  struct itimerspec spec {};
  if (on) {
    spec.it_value = absl::ToTimespec(every_);
    spec.it_interval = spec.it_value;
  }
  ::timer_settime(timer_, 0, &spec, nullptr);
}

ReleaseTicker::Armed::Armed(ReleaseTicker* ticker) : ticker_(ticker) {
  if (ticker_ != nullptr) ticker_->Set(true);
}

ReleaseTicker::Armed::~Armed() {
  if (ticker_ != nullptr) ticker_->Set(false);
}

}  // namespace halloc
