// Reaper: destroys objects on a background thread.
//
// Closing the daemon's last fd of a buffer frees its pages: ~1 ms for 8 MiB.
// Done inline, that cost lands on the Release reply and, worse, inside the
// allocator's lock, where it stalls every other client. Like the kernel
// system heap's deferred free, the allocator hands dropped buffers to a
// Reaper instead; accounting has already forgotten them, the memory follows
// a moment later.
//
// Dropped objects are batched (up to 64, or for at most 2 ms) so that a
// stream of Releases costs one wake-up of the reaper per batch.
//
// Thread-safe. Add() never runs a destructor on the caller's thread, so it
// may be called under the caller's own locks (the Reaper takes only its own,
// and destructors run with no lock held).
#ifndef HALLOC_SERVICE_UTIL_REAPER_H_
#define HALLOC_SERVICE_UTIL_REAPER_H_

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace halloc {

class Reaper {
 public:
  Reaper();
  // Destroys whatever is still queued, then joins the thread.
  ~Reaper();
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  // Queues one reference; it is dropped on the reaper thread.
  void Add(std::shared_ptr<const void> object);
  // Returns once everything queued before the call has been dropped.
  void Flush();

 private:
  void Run();

  absl::Mutex mu_;
  absl::CondVar progress_;  // dropped_ grew
  std::vector<std::shared_ptr<const void>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t added_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int flushing_ ABSL_GUARDED_BY(mu_) = 0;  // Flush() callers waiting
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_REAPER_H_
