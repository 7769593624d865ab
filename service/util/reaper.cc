#include "service/util/reaper.h"

#include <utility>

namespace halloc {
namespace {

// The reaper wakes for a batch this big, or once the oldest queued object
// has waited kLinger: one wake-up per batch of Releases, not one per
// Release, on machines where every context switch competes with requests.
constexpr size_t kBatch = 64;
constexpr absl::Duration kLinger = absl::Milliseconds(2);

}  // namespace

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
  ++flushing_;
  while (dropped_ < target) progress_.Wait(&mu_);
  --flushing_;
}

void Reaper::Run() {
  auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !queue_.empty();
  };
  auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || flushing_ > 0 || queue_.size() >= kBatch;
  };
  for (;;) {
    std::vector<std::shared_ptr<const void>> batch;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&any));
      mu_.AwaitWithTimeout(absl::Condition(&full), kLinger);
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
