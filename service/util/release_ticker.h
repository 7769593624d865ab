// ReleaseTicker: bounds how long a file's release can hold the thread that
// drops the file's last reference.
//
// A file's release runs on whichever thread drops its last reference (at
// that thread's return from close or recvmsg). A TCP socket with SO_LINGER
// and data its peer does not take waits there for its linger time, any
// length its owner picks; so does every such socket queued, in flight, on
// a Unix socket being closed. Those waits are interruptible: while a
// ReleaseTicker is armed, a no-op signal reaches its thread every `every`,
// and the first one ends every wait of the release under way (the signal
// stays pending until the thread returns to user space, after the
// releases). A close or receive that drops such files thus takes about one
// tick, not their linger times.
//
// What no signal ends: a close(2) of an fd in this process's table also
// runs the file's flush, which for a FUSE file waits for its server in a
// wait only a fatal signal ends. Fds never installed here (dropped by the
// kernel for want of room in a receive, or left queued on a socket that is
// closed) are released without a flush.
//
// One per thread (its timer signals the thread that created it); not
// thread-safe. Other threads are never signalled.
#ifndef HALLOC_SERVICE_UTIL_RELEASE_TICKER_H_
#define HALLOC_SERVICE_UTIL_RELEASE_TICKER_H_

#include <time.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace halloc {

class ReleaseTicker {
 public:
  // The signal ticks are sent with (a real-time one glibc leaves free; its
  // handler does nothing and is installed without SA_RESTART).
  static int Signal();
  // A ticker for the calling thread, disarmed.
  static absl::StatusOr<std::unique_ptr<ReleaseTicker>> ForThisThread(absl::Duration every);
  ~ReleaseTicker();
  ReleaseTicker(const ReleaseTicker&) = delete;
  ReleaseTicker& operator=(const ReleaseTicker&) = delete;

  // Ticks from now until the Armed is destroyed. A null ticker arms
  // nothing (releases then wait as long as they like).
  class Armed {
   public:
    explicit Armed(ReleaseTicker* ticker);
    ~Armed();
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;

   private:
    ReleaseTicker* const ticker_;
  };

 private:
  ReleaseTicker(timer_t timer, absl::Duration every) : timer_(timer), every_(every) {}
  void Set(bool on);

  const timer_t timer_;
  const absl::Duration every_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_RELEASE_TICKER_H_
