#include "service/util/time_budget.h"

#include "absl/container/flat_hash_map.h"

namespace halloc {

namespace {
// Past this many keys, ended windows are swept at the next charge.
constexpr size_t kSweepAt = 1024;
}  // namespace

bool TimeBudget::Over(uint64_t key, absl::Time now) const {
  auto it = uses_.find(key);
  return it != uses_.end() && now - it->second.start < window_ &&
         it->second.spent >= allowed_;
}

absl::Time TimeBudget::WindowEnd(uint64_t key) const {
  auto it = uses_.find(key);
  return it == uses_.end() ? absl::InfinitePast() : it->second.start + window_;
}

void TimeBudget::Charge(uint64_t key, absl::Duration spent, absl::Time now) {
  if (uses_.size() >= kSweepAt) {
    absl::erase_if(uses_, [&](const auto& u) { return now - u.second.start >= window_; });
  }
  Use& u = uses_[key];
  if (u.start == absl::Time() || now - u.start >= window_) u = Use{now, absl::ZeroDuration()};
  u.spent += spent;
}

}  // namespace halloc
