// WorkQueue: runs tasks one at a time on a thread of its own, in the order
// they were posted, with bounds on what may wait.
//
// For work an event loop must not do itself (the broker's large
// allocations: committing gigabytes takes seconds, during which its one
// thread would answer no one). At most `max_queued` tasks wait, and at
// most `max_per_key` of them for one key (a uid), so that one
// caller cannot fill the queue for everyone; Post says RESOURCE_EXHAUSTED
// past either. Destroying it drops what still waits (unrun), lets the
// running task finish, and joins the thread.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_UTIL_WORK_QUEUE_H_
#define HALLOC_SERVICE_UTIL_WORK_QUEUE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace halloc {

class WorkQueue {
 public:
  // `after_each`, if any, runs on the queue's thread after each task, once
  // the task's place is free (HasRoom sees it).
  WorkQueue(size_t max_queued, size_t max_per_key,
            absl::AnyInvocable<void()> after_each = nullptr);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `task` for `key`; RESOURCE_EXHAUSTED (and `task` dropped) when
  // the queue, or `key`'s share of it, is full. A task counts against its
  // key until it has run.
  absl::Status Post(uint64_t key, absl::AnyInvocable<void() &&> task);
  // Whether Post(key, ...) would take a task now.
  bool HasRoom(uint64_t key);

 private:
  void Run();

  const size_t max_queued_;
  const size_t max_per_key_;
  absl::AnyInvocable<void()> after_each_;
  absl::Mutex mu_;
  struct Task {
    uint64_t key;
    absl::AnyInvocable<void() &&> run;
  };
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, size_t> per_key_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_WORK_QUEUE_H_
