#include "service/util/stream_slots.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "service/util/clock.h"

namespace halloc {

StreamSlots::Slot::Slot(Slot&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), uid_(other.uid_), taken_at_(other.taken_at_) {}

StreamSlots::Slot& StreamSlots::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr) owner_->Give(uid_, taken_at_);
    owner_ = std::exchange(other.owner_, nullptr);
    uid_ = other.uid_;
    taken_at_ = other.taken_at_;
  }
  return *this;
}

StreamSlots::Slot::~Slot() {
  if (owner_ != nullptr) owner_->Give(uid_, taken_at_);
}

void StreamSlots::Slot::Overstayed(absl::Duration cool_down) {
  if (owner_ != nullptr && uid_) owner_->CoolDown(*uid_, cool_down);
}

StreamSlots::StreamSlots(std::string what, int total, int per_uid, PlaceBudget budget)
    : what_(std::move(what)),
      total_(total),
      per_uid_(per_uid),
      budget_limits_(budget),
      budget_(budget.window, budget.allowed) {}

absl::StatusOr<StreamSlots::Slot> StreamSlots::Take(std::optional<uid_t> uid) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = MonotonicNow();
  if (taken_ >= total_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("at most ", total_, " ", what_, " at a time; try again later"));
  }
  if (uid) {
    if (auto c = cooling_.find(*uid); c != cooling_.end()) {
      const absl::Duration left = c->second - now;
      if (left > absl::ZeroDuration()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "a stream of uid ", *uid, " was ended for outstaying its time: no more ", what_,
            " for it for ", absl::FormatDuration(absl::Ceil(left, absl::Seconds(1)))));
      }
      cooling_.erase(c);
    }
    // What its ended streams took in the window open now, and what its
    // open ones have held so far. (Looked up, not made: a uid refused with
    // none open leaves no entry.)
    const auto held = by_uid_.find(*uid);
    const Held none;
    const Held& open = held == by_uid_.end() ? none : held->second;
    if (budget_limits_.allowed != absl::InfiniteDuration() &&
        budget_.Spent(*uid, now) + (now - absl::UnixEpoch()) * open.open - open.taken_at_sum >=
            budget_limits_.allowed) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "uid ", *uid, "'s ", what_, " held their places for ",
          absl::FormatDuration(budget_limits_.allowed), " or more within ",
          absl::FormatDuration(budget_limits_.window), ": no more for it for a while"));
    }
    if (open.open >= per_uid_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("at most ", per_uid_, " ", what_, " at a time for one uid (", *uid, ")"));
    }
    Held& mine = by_uid_[*uid];
    ++mine.open;
    mine.taken_at_sum += now - absl::UnixEpoch();
  }
  ++taken_;
  return Slot(this, uid, now);
}

void StreamSlots::CoolDown(uid_t uid, absl::Duration cool_down) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = MonotonicNow();
  // Bounded by the uids cut within one cool-down; pruned past a few.
  constexpr size_t kPruneAt = 256;
  if (cooling_.size() >= kPruneAt) {
    absl::erase_if(cooling_, [&](const auto& c) { return c.second <= now; });
  }
  absl::Time& until = cooling_[uid];
  until = std::max(until, now + cool_down);
}

int StreamSlots::taken() const {
  absl::MutexLock lock(&mu_);
  return taken_;
}

void StreamSlots::Give(std::optional<uid_t> uid, absl::Time taken_at) {
  absl::MutexLock lock(&mu_);
  --taken_;
  if (!uid) return;
  const absl::Time now = MonotonicNow();
  // Charged to the window its end falls in (one its start opened may be
  // over by now, and would take nothing).
  if (budget_limits_.allowed != absl::InfiniteDuration()) {
    budget_.Charge(*uid, now - taken_at, now);
  }
  auto it = by_uid_.find(*uid);
  if (it == by_uid_.end()) return;
  it->second.taken_at_sum -= taken_at - absl::UnixEpoch();
  if (--it->second.open == 0) by_uid_.erase(it);
}

}  // namespace halloc
