#include "service/util/work_queue.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace halloc {

WorkQueue::WorkQueue(size_t max_queued, size_t max_per_key, absl::AnyInvocable<void()> after_each)
    : max_queued_(max_queued), max_per_key_(max_per_key), after_each_(std::move(after_each)),
      thread_([this] { Run(); }) {}

WorkQueue::~WorkQueue() {
  absl::flat_hash_map<uint64_t, Key> dropped;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    dropped.swap(keys_);
    waiting_ = 0;
  }
  thread_.join();
  // `dropped` (and what the tasks captured) goes here, on the caller's
  // thread, with no lock held.
}

absl::Status WorkQueue::Post(uint64_t key, absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("shutting down");
  // A key that comes (back) joins the end of the turns: as served just
  // now, not as never served (one posting again as soon as its task ran
  // would go ahead of a key served once and waiting since, for good).
  Key& mine = keys_.try_emplace(key, Key{{}, 0, served_}).first->second;
  if (waiting_ >= max_queued_ || mine.count >= max_per_key_) {
    const bool own = mine.count >= max_per_key_;
    if (mine.count == 0) keys_.erase(key);
    return absl::ResourceExhaustedError(
        own ? absl::StrCat(max_per_key_, " large requests of this uid are still "
                                         "being served; wait for their answers")
            : absl::StrCat(max_queued_, " large requests wait already; try again"));
  }
  ++mine.count;
  mine.waiting.push_back({++posted_, std::move(task)});
  ++waiting_;
  return absl::OkStatus();
}

uint64_t WorkQueue::NextKey() const {
  // Few keys wait at once (max_queued_ tasks in all): a scan.
  const Key* best = nullptr;
  uint64_t best_key = 0;
  for (const auto& [key, k] : keys_) {
    if (k.waiting.empty()) continue;
    if (best == nullptr || k.last_served < best->last_served ||
        (k.last_served == best->last_served && k.waiting.front().seq < best->waiting.front().seq)) {
      best = &k;
      best_key = key;
    }
  }
  return best_key;
}

bool WorkQueue::HasRoom(uint64_t key) {
  absl::MutexLock lock(&mu_);
  if (stop_ || waiting_ >= max_queued_) return false;
  auto it = keys_.find(key);
  return it == keys_.end() || it->second.count < max_per_key_;
}

void WorkQueue::Run() {
  for (;;) {
    Task task;
    uint64_t key;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](WorkQueue* q)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) { return q->stop_ || q->waiting_ > 0; },
          this));
      if (stop_) return;
      key = NextKey();
      Key& k = keys_.at(key);
      task = std::move(k.waiting.front());
      k.waiting.pop_front();
      k.last_served = ++served_;
      --waiting_;
    }
    std::move(task.run)();
    task.run = nullptr;  // what it captured goes before its key is freed
    {
      absl::MutexLock lock(&mu_);
      auto it = keys_.find(key);  // gone once the destructor took what waits
      if (it != keys_.end() && --it->second.count == 0) keys_.erase(it);
    }
    if (after_each_) after_each_();  // the key's place is free by now
  }
}

}  // namespace halloc
