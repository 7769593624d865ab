#include "service/util/work_queue.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace halloc {

WorkQueue::WorkQueue(size_t max_queued, size_t max_per_key, absl::AnyInvocable<void()> after_each)
    : max_queued_(max_queued), max_per_key_(max_per_key), after_each_(std::move(after_each)),
      thread_([this] { Run(); }) {}

WorkQueue::~WorkQueue() {
  std::deque<Task> dropped;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    dropped.swap(queue_);
  }
  thread_.join();
  // `dropped` (and what the tasks captured) goes here, on the caller's
  // thread, with no lock held.
}

absl::Status WorkQueue::Post(uint64_t key, absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("shutting down");
  size_t& mine = per_key_[key];
  if (queue_.size() >= max_queued_ || mine >= max_per_key_) {
    const bool own = mine >= max_per_key_;
    if (mine == 0) per_key_.erase(key);
    return absl::ResourceExhaustedError(
        own ? absl::StrCat(max_per_key_, " large requests of this uid are still "
                                         "being served; wait for their answers")
            : absl::StrCat(max_queued_, " large requests wait already; try again"));
  }
  ++mine;
  queue_.push_back({key, std::move(task)});
  return absl::OkStatus();
}

bool WorkQueue::HasRoom(uint64_t key) {
  absl::MutexLock lock(&mu_);
  if (stop_ || queue_.size() >= max_queued_) return false;
  auto it = per_key_.find(key);
  return it == per_key_.end() || it->second < max_per_key_;
}

void WorkQueue::Run() {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) {
            return q->stop_ || !q->queue_.empty();
          },
          this));
      if (stop_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    std::move(task.run)();
    task.run = nullptr;  // what it captured goes before its key is freed
    {
      absl::MutexLock lock(&mu_);
      if (--per_key_[task.key] == 0) per_key_.erase(task.key);
    }
    if (after_each_) after_each_();  // the key's place is free by now
  }
}

}  // namespace halloc
