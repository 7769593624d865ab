#include "service/util/last_reference_poll.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "service/util/clock.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

// The thread's passes are at least this far apart (at most four a second,
// each asking about all that fell due since the last).
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

// When the thread asks next about memory answered `asks` times, last put
// back at `asked`: the interval after that many answers.
absl::Time DueOf(uint32_t asks, absl::Time asked) { return asked + IntervalAfter(asks); }

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(2);
  return *limiter;
}

}  // namespace

LastReferencePoll::LastReferencePoll(IsLast is_last, bool on_a_thread, Clock now)
    : is_last_(std::move(is_last)), on_a_thread_(on_a_thread), now_(std::move(now)) {}

size_t LastReferencePoll::Budget::LeftAt(absl::Time now) {
  if (now - start >= kRefreshWindow) {
    start = now;
    used = 0;
  }
  return kMaxRefresh - std::min(used, kMaxRefresh);
}

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
  one.push_back(Kept{std::move(fd), token, group, absl::InfinitePast(), 0});
  {
    absl::MutexLock lock(&mu_);
    asking_ += one.size();
  }
  Ask(std::move(one));
}

void LastReferencePoll::PopLocked(Group& g, std::deque<Kept>& q, std::vector<Kept>& out) {
  out.push_back(std::move(q.front()));
  q.pop_front();
  --g.size;
  --kept_;
  ++asking_;
}

void LastReferencePoll::PruneLocked(absl::Time now) {
  // Not while its refresh budget's window is open: a refresh that took all
  // of a group out leaves it empty until Ask puts it back, and another Ask
  // finishing meanwhile must not hand the group a fresh budget.
  absl::erase_if(groups_, [now](const auto& entry) {
    return entry.second.size == 0 && now - entry.second.refresh.start >= kRefreshWindow;
  });
}

absl::Time LastReferencePoll::NextDueLocked() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [id, g] : groups_) {
    for (const std::deque<Kept>& q : g.by_asks) {
      if (!q.empty()) next = std::min(next, DueOf(q.front().asks, q.front().asked));
    }
  }
  return next;
}

std::vector<LastReferencePoll::Kept> LastReferencePoll::TakeDueLocked(absl::Time now) {
  std::vector<Kept> due;
  for (auto& [id, g] : groups_) {
    for (std::deque<Kept>& q : g.by_asks) {
      while (!q.empty() && DueOf(q.front().asks, q.front().asked) <= now) {
        PopLocked(g, q, due);
      }
    }
  }
  return due;
}

std::vector<LastReferencePoll::Kept> LastReferencePoll::TakeForRefreshLocked(
    std::optional<uint64_t> group, absl::Time now) {
  // The group's (or anyone's), at most kMaxRefresh of them: a client
  // refused again and again makes hallocd ask a bounded amount each time,
  // however much it keeps. Those asked about least often first (just
  // released: a client that closed its fd and asks again at once must be
  // seen), then those asked about longest ago: queue by queue from the
  // fewest answers up, each from its front; across groups, the front asked
  // about longest ago first. Those asked only at Follow (queue 0) are each
  // asked so once; the rest come out of the budget, so that refusals in a
  // stream cost at most kMaxRefresh asks per kRefreshWindow each.
  std::vector<Group*> from;
  Budget* budget = &anyones_refresh_;
  if (group.has_value()) {
    auto it = groups_.find(*group);
    if (it == groups_.end()) return {};
    from.push_back(&it->second);
    budget = &it->second.refresh;
  } else {
    for (auto& [id, g] : groups_) from.push_back(&g);
  }
  std::vector<Kept> taken;
  size_t limit = kMaxRefresh;  // for queue 0: the per-call bound only
  size_t unbudgeted = kMaxRefresh;  // taken from queue 0, once past it
  for (uint32_t i = 0; i < kQueues && taken.size() < limit; ++i) {
    if (i == 1) {
      unbudgeted = taken.size();
      limit = std::min(kMaxRefresh, unbudgeted + budget->LeftAt(now));
    }
    while (taken.size() < limit) {
      Group* oldest = nullptr;
      for (Group* g : from) {
        const std::deque<Kept>& q = g->by_asks[i];
        if (!q.empty() &&
            (oldest == nullptr || q.front().asked < oldest->by_asks[i].front().asked)) {
          oldest = g;
        }
      }
      if (oldest == nullptr) break;
      PopLocked(*oldest, oldest->by_asks[i], taken);
    }
  }
  if (taken.size() > unbudgeted) budget->used += taken.size() - unbudgeted;
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
      ++k.asks;
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
  if (!still.empty()) {
    // Stamped as they go back, so that each queue stays in the order of its
    // stamps (and of its dues) whoever asked.
    const absl::Time now = now_();
    for (Kept& k : still) {
      k.asked = now;
      Group& g = groups_[k.group];
      g.by_asks[std::min(k.asks, kQueues) - 1].push_back(std::move(k));
      ++g.size;
      ++kept_;
    }
    if (on_a_thread_ && !thread_.joinable() && !stop_) thread_ = std::thread([this] { Run(); });
    changed_.Signal();
  }
  // Groups left empty go (not at each take: most come back at once).
  PruneLocked(now_());
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
        // The earliest due, but no sooner than kBatch after the last pass.
        const absl::Time wake = std::max(NextDueLocked(), last_pass + kBatch);
        now = now_();
        if (wake <= now) break;
        // (A timeout, not a deadline: the TSan shim interposes that one.)
        changed_.WaitWithTimeout(&mu_, wake - now);
      }
      last_pass = now;
      due = TakeDueLocked(now);
    }
    Ask(std::move(due));
  }
}

void LastReferencePoll::Refresh(std::optional<uint64_t> group) {
  std::vector<Kept> asked;
  {
    absl::MutexLock lock(&mu_);
    asked = TakeForRefreshLocked(group, now_());
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
  return kept_ + asking_;
}

}  // namespace halloc
