#include "service/util/last_reference_poll.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <utility>

#include "service/util/log_limit.h"

namespace halloc {
namespace {

// The thread's passes are at least this far apart (each scans what is
// kept: at most four scans a second).
constexpr absl::Duration kBatch = absl::Milliseconds(250);

// Errors a later ask may not meet (hallocd out of fds or memory for a
// moment): the memory is kept, and charged, until an answer comes.
bool Passing(int err) {
  return err == EMFILE || err == ENFILE || err == ENOMEM || err == EAGAIN || err == EINTR;
}

// How long after its `asks`-th answer memory is asked about again:
// kFirstInterval, doubling, at most kMaxInterval.
absl::Duration IntervalAfter(uint32_t asks) {
  absl::Duration d = LastReferencePoll::kFirstInterval;
  for (uint32_t i = 1; i < asks && d < LastReferencePoll::kMaxInterval; ++i) d *= 2;
  return std::min(d, LastReferencePoll::kMaxInterval);
}

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(2);
  return *limiter;
}

}  // namespace

LastReferencePoll::LastReferencePoll(IsLast is_last, bool on_a_thread)
    : is_last_(std::move(is_last)), on_a_thread_(on_a_thread) {}

LastReferencePoll::~LastReferencePoll() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    changed_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

void LastReferencePoll::Follow(UniqueFd fd, uint64_t token, uint64_t group) {
  std::vector<Kept> one;
  one.push_back(Kept{std::move(fd), token, group, absl::InfinitePast(), absl::InfinitePast(), 0});
  {
    absl::MutexLock lock(&mu_);
    asking_ += one.size();
  }
  Ask(std::move(one));
}

std::vector<LastReferencePoll::Kept> LastReferencePoll::TakeLocked(
    std::vector<Kept>::iterator first) {
  std::vector<Kept> taken(std::make_move_iterator(first), std::make_move_iterator(kept_.end()));
  kept_.erase(first, kept_.end());
  asking_ += taken.size();
  return taken;
}

void LastReferencePoll::Ask(std::vector<Kept> kept) {
  // Gone: closed before the lock (closing frees pages), then reported.
  std::vector<Kept> gone;
  std::vector<Kept> still;
  int cannot_tell = 0;  // an errno, of `unknown` of them
  uint64_t unknown = 0;
  for (Kept& k : kept) {
    const int last = k.fd ? is_last_(k.fd.get()) : -EBADF;
    if (last == 0 || (last < 0 && Passing(-last))) {
      k.asked = absl::Now();
      ++k.asks;
      k.due = k.asked + IntervalAfter(k.asks);
      still.push_back(std::move(k));
      continue;
    }
    if (last < 0) {
      cannot_tell = -last;
      ++unknown;
    }
    gone.push_back(std::move(k));
  }
  // Closed before they are reported: once a settle sees the token, the
  // charge goes, and the pages must go first (closing frees them).
  for (Kept& k : gone) k.fd.reset();
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
  if (on_a_thread_ && !thread_.joinable() && !stop_) thread_ = std::thread([this] { Run(); });
  changed_.Signal();
}

void LastReferencePoll::Run() {
  absl::Time last_pass = absl::InfinitePast();
  for (;;) {
    std::vector<Kept> due;
    {
      absl::MutexLock lock(&mu_);
      absl::Time now;
      for (;;) {
        if (stop_) return;
        absl::Time next = absl::InfiniteFuture();
        for (const Kept& k : kept_) next = std::min(next, k.due);
        // The earliest due, but no sooner than kBatch after the last pass.
        const absl::Time wake = std::max(next, last_pass + kBatch);
        now = absl::Now();
        if (wake <= now) break;
        // (A timeout, not a deadline: the TSan shim interposes that one.)
        changed_.WaitWithTimeout(&mu_, wake - now);
      }
      last_pass = now;
      due = TakeLocked(std::partition(kept_.begin(), kept_.end(),
                                      [&](const Kept& k) { return k.due > now; }));
    }
    Ask(std::move(due));
  }
}

void LastReferencePoll::Refresh(std::optional<uint64_t> group) {
  std::vector<Kept> asked;
  {
    absl::MutexLock lock(&mu_);
    // The group's (or anyone's), at most kMaxRefresh of them: a client
    // refused again and again makes hallocd ask a bounded amount each
    // time, however much it keeps.
    auto first = std::partition(kept_.begin(), kept_.end(), [&](const Kept& k) {
      return group.has_value() && k.group != *group;
    });
    if (kept_.end() - first > static_cast<std::ptrdiff_t>(kMaxRefresh)) {
      // Those asked about least often first (just released: a client that
      // closed its fd and asks again at once must be seen), then those
      // asked about longest ago. Sorted so that the chosen end up last.
      std::nth_element(first, kept_.end() - kMaxRefresh, kept_.end(),
                       [](const Kept& a, const Kept& b) {
                         if (a.asks != b.asks) return a.asks > b.asks;
                         return a.asked > b.asked;
                       });
      first = kept_.end() - kMaxRefresh;
    }
    asked = TakeLocked(first);
  }
  if (!asked.empty()) Ask(std::move(asked));
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
