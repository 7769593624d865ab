#include "service/util/reaper.h"

#include <utility>

namespace halloc {

Reaper::Reaper() : thread_([this] { Run(); }) {}

Reaper::~Reaper() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void Reaper::Add(std::shared_ptr<const void> object) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(object));
  ++added_;
}

void Reaper::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = added_;
  while (dropped_ < target) progress_.Wait(&mu_);
}

void Reaper::Run() {
  for (;;) {
    std::vector<std::shared_ptr<const void>> batch;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Reaper* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
            return r->stop_ || !r->queue_.empty();
          },
          this));
      batch.swap(queue_);
      stop = stop_;
    }
    const uint64_t n = batch.size();
    batch.clear();  // the destructors run here, with no lock held
    absl::MutexLock lock(&mu_);
    dropped_ += n;
    progress_.SignalAll();
    if (stop && queue_.empty()) return;
  }
}

}  // namespace halloc
