#include "service/util/last_reference_poll.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <utility>

#include "service/util/log_limit.h"

namespace halloc {
namespace {

// What is due this soon is asked about in the same wake-up.
constexpr absl::Duration kBatch = absl::Milliseconds(50);

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(2);
  return *limiter;
}

}  // namespace

LastReferencePoll::LastReferencePoll(IsLast is_last) : is_last_(std::move(is_last)) {}

LastReferencePoll::~LastReferencePoll() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    changed_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

void LastReferencePoll::Follow(UniqueFd fd, uint64_t token, uint64_t group) {
  {
    absl::MutexLock lock(&mu_);
    ++asking_;
  }
  std::vector<Kept> one;
  one.push_back(Kept{std::move(fd), token, group, absl::Now(), kFirstInterval});
  Ask(std::move(one));
}

void LastReferencePoll::Ask(std::vector<Kept> kept) {
  // Gone: closed on the way out, after the lock (closing frees pages).
  std::vector<Kept> gone;
  std::vector<Kept> still;
  int cannot_tell = 0;  // an errno, of `unknown` of them
  uint64_t unknown = 0;
  for (Kept& k : kept) {
    const int last = k.fd ? is_last_(k.fd.get()) : -EBADF;
    if (last == 0) {
      k.due = absl::Now() + k.interval;
      k.interval = std::min(2 * k.interval, kMaxInterval);
      still.push_back(std::move(k));
      continue;
    }
    if (last < 0) {
      cannot_tell = -last;
      ++unknown;
    }
    gone.push_back(std::move(k));
  }
  absl::MutexLock lock(&mu_);
  asking_ -= kept.size();
  for (const Kept& k : gone) gone_.push_back(k.token);
  unwatched_ += unknown;
  if (unknown != 0) {
    if (uint64_t dropped; Limiter().Allow("last_reference_poll", &dropped)) {
      LOG(WARNING) << "cannot tell whether released memory is still in use ("
                   << std::strerror(cannot_tell) << "): its charge is returned at once"
                   << LogLimiter::Dropped(dropped);
    }
  }
  if (still.empty()) return;
  kept_.insert(kept_.end(), std::make_move_iterator(still.begin()),
               std::make_move_iterator(still.end()));
  if (!thread_.joinable() && !stop_) thread_ = std::thread([this] { Run(); });
  changed_.Signal();
}

void LastReferencePoll::Run() {
  for (;;) {
    std::vector<Kept> due;
    {
      absl::MutexLock lock(&mu_);
      absl::Time until;
      for (;;) {
        if (stop_) return;
        absl::Time next = absl::InfiniteFuture();
        for (const Kept& k : kept_) next = std::min(next, k.due);
        until = absl::Now() + kBatch;
        if (next <= until) break;
        // (A timeout, not a deadline: the TSan shim interposes that one.)
        changed_.WaitWithTimeout(&mu_, next - absl::Now());
      }
      auto first_due = std::partition(kept_.begin(), kept_.end(),
                                      [&](const Kept& k) { return k.due > until; });
      due.assign(std::make_move_iterator(first_due), std::make_move_iterator(kept_.end()));
      kept_.erase(first_due, kept_.end());
      asking_ += due.size();
    }
    Ask(std::move(due));
  }
}

void LastReferencePoll::Refresh(uint64_t group) {
  std::vector<Kept> mine;
  {
    absl::MutexLock lock(&mu_);
    auto first = std::partition(kept_.begin(), kept_.end(),
                                [&](const Kept& k) { return k.group != group; });
    mine.assign(std::make_move_iterator(first), std::make_move_iterator(kept_.end()));
    kept_.erase(first, kept_.end());
    asking_ += mine.size();
  }
  if (!mine.empty()) Ask(std::move(mine));
}

std::vector<uint64_t> LastReferencePoll::TakeGone(std::vector<UniqueFd>*) {
  std::vector<uint64_t> gone;
  absl::MutexLock lock(&mu_);
  gone.swap(gone_);
  return gone;
}

uint64_t LastReferencePoll::unwatched() const {
  absl::MutexLock lock(&mu_);
  return unwatched_;
}

size_t LastReferencePoll::following() const {
  absl::MutexLock lock(&mu_);
  return kept_.size() + asking_;
}

}  // namespace halloc
