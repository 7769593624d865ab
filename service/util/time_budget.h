// TimeBudget: how much of one thread's time each key (a uid) took lately.
// A key that took `allowed` or more within one `window` (counted from the
// first use that opened it) is over its budget until that window ends;
// then it starts afresh. Not thread-safe: for the one thread it measures.
#ifndef HALLOC_SERVICE_UTIL_TIME_BUDGET_H_
#define HALLOC_SERVICE_UTIL_TIME_BUDGET_H_

#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace halloc {

class TimeBudget {
 public:
  TimeBudget(absl::Duration window, absl::Duration allowed)
      : window_(window), allowed_(allowed) {}

  // Whether `key` has used its time in the window open at `now`.
  bool Over(uint64_t key, absl::Time now) const;
  // `key` took `spent` of the thread's time, starting at `now`.
  void Charge(uint64_t key, absl::Duration spent, absl::Time now);
  // What `key` has spent in the window open at `now` (zero: none open).
  absl::Duration Spent(uint64_t key, absl::Time now) const;
  // When the window `key` has open ends (InfinitePast: none open).
  absl::Time WindowEnd(uint64_t key) const;
  // Keys with a window open (ended ones are dropped as the map grows).
  size_t size() const { return uses_.size(); }

  // Ended windows are swept once this many keys are kept, and then again
  // at twice what the sweep left.
  static constexpr size_t kSweepAt = 1024;

 private:
  struct Use {
    absl::Time start;
    absl::Duration spent;
  };
  const absl::Duration window_;
  const absl::Duration allowed_;
  absl::flat_hash_map<uint64_t, Use> uses_;
  size_t sweep_at_ = kSweepAt;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_TIME_BUDGET_H_
