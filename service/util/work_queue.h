// WorkQueue: runs tasks one at a time on a thread of its own, in turns by
// key, with bounds on what may wait.
//
// For work an event loop must not do itself (the broker's large
// allocations: committing gigabytes takes seconds, during which its one
// thread would answer no one). At most `max_queued` tasks wait, and at
// most `max_per_key` of them for one key (a uid), so that one
// caller cannot fill the queue for everyone; Post says RESOURCE_EXHAUSTED
// past either. One key's tasks run in the order posted; across keys, the
// next task is the one of the key served least recently (a key with none
// waiting or running counts as served when it posts again; ties by posting
// order): a key with a few slow tasks waiting delays another key's by at
// most one of them, not all, and none waits for good. Destroying it
// drops what still waits (unrun), lets the running task finish, and joins
// the thread.
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
    uint64_t seq;  // posting order
    absl::AnyInvocable<void() &&> run;
  };
  struct Key {
    std::deque<Task> waiting;
    size_t count = 0;          // waiting and running
    uint64_t last_served = 0;  // serial of its last task taken, or of its coming
  };
  // The waiting task to run next (some key has one): its key.
  uint64_t NextKey() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::flat_hash_map<uint64_t, Key> keys_ ABSL_GUARDED_BY(mu_);  // while count > 0
  size_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t posted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t served_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_WORK_QUEUE_H_
