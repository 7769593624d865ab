#include "service/util/time_budget.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"

namespace halloc {

bool TimeBudget::Over(uint64_t key, absl::Time now) const {
  auto it = uses_.find(key);
  return it != uses_.end() && now - it->second.start < window_ &&
         it->second.spent >= allowed_;
}

absl::Duration TimeBudget::Spent(uint64_t key, absl::Time now) const {
  auto it = uses_.find(key);
  if (it == uses_.end() || now - it->second.start >= window_) return absl::ZeroDuration();
  return it->second.spent;
}

absl::Time TimeBudget::WindowEnd(uint64_t key) const {
  auto it = uses_.find(key);
  return it == uses_.end() ? absl::InfinitePast() : it->second.start + window_;
}

void TimeBudget::Charge(uint64_t key, absl::Duration spent, absl::Time now) {
  if (uses_.size() >= sweep_at_) {
    absl::erase_if(uses_, [&](const auto& u) { return now - u.second.start >= window_; });
    // Next at twice what is left: with that many windows open, a sweep at
    // every charge (every inline allocation, the broker's) would scan them
    // all each time.
    sweep_at_ = std::max(kSweepAt, 2 * uses_.size());
  }
  Use& u = uses_[key];
  if (u.start == absl::Time() || now - u.start >= window_) u = Use{now, absl::ZeroDuration()};
  u.spent += spent;
}

}  // namespace halloc
