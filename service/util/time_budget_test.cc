#include "service/util/time_budget.h"

#include "gtest/gtest.h"

namespace halloc {
namespace {

constexpr absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(TimeBudgetTest, AKeyIsOverOnceItsWindowsShareIsSpentUntilTheWindowEnds) {
  TimeBudget b(absl::Milliseconds(100), absl::Milliseconds(25));
  EXPECT_FALSE(b.Over(1, kT0)) << "never charged";
  b.Charge(1, absl::Milliseconds(20), kT0);
  EXPECT_FALSE(b.Over(1, kT0 + absl::Milliseconds(30)));
  b.Charge(1, absl::Milliseconds(5), kT0 + absl::Milliseconds(30));
  EXPECT_TRUE(b.Over(1, kT0 + absl::Milliseconds(40)));
  EXPECT_FALSE(b.Over(2, kT0 + absl::Milliseconds(40))) << "each key its own";
  EXPECT_TRUE(b.Over(1, kT0 + absl::Milliseconds(99)));
  EXPECT_FALSE(b.Over(1, kT0 + absl::Milliseconds(100))) << "the window ended";
  // A new window starts at the next charge, afresh.
  b.Charge(1, absl::Milliseconds(1), kT0 + absl::Milliseconds(150));
  EXPECT_FALSE(b.Over(1, kT0 + absl::Milliseconds(160)));
}

TEST(TimeBudgetTest, EndedWindowsDoNotPileUp) {
  TimeBudget b(absl::Milliseconds(100), absl::Milliseconds(25));
  for (uint64_t key = 0; key < 5000; ++key) {
    b.Charge(key, absl::Microseconds(1), kT0 + absl::Seconds(static_cast<int64_t>(key)));
  }
  EXPECT_LE(b.size(), 1025u);
}

// With more windows open than the sweep threshold, a sweep (which finds
// nothing ended) is not run again at every charge; ended ones still go
// once the map has doubled.
TEST(TimeBudgetTest, ManyOpenWindowsAreNotSweptAtEveryCharge) {
  TimeBudget b(absl::Milliseconds(100), absl::Milliseconds(25));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const size_t open = TimeBudget::kSweepAt + 10;
  for (uint64_t k = 0; k < open; ++k) b.Charge(k, absl::Microseconds(1), t0);
  EXPECT_EQ(b.size(), open) << "open windows were dropped";
  // All ended by now: they go at the next sweep, which comes when the map
  // reaches twice what the last one left, not before.
  const absl::Time later = t0 + absl::Seconds(1);
  uint64_t k = open;
  while (b.size() >= open && k < 4 * open) b.Charge(k++, absl::Microseconds(1), later);
  EXPECT_LT(b.size(), open) << "ended windows piled up";
  EXPECT_GE(k, 2 * TimeBudget::kSweepAt) << "swept again before the map doubled";
  EXPECT_FALSE(b.Over(k - 1, later));
}

TEST(TimeBudgetTest, WindowEndIsWhenTheOpenWindowCloses) {
  TimeBudget budget(absl::Milliseconds(100), absl::Milliseconds(5));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(budget.WindowEnd(7), absl::InfinitePast()) << "nothing charged";
  budget.Charge(7, absl::Milliseconds(1), t0);
  budget.Charge(7, absl::Milliseconds(1), t0 + absl::Milliseconds(50));
  EXPECT_EQ(budget.WindowEnd(7), t0 + absl::Milliseconds(100));
  budget.Charge(7, absl::Milliseconds(1), t0 + absl::Milliseconds(120));  // a new window
  EXPECT_EQ(budget.WindowEnd(7), t0 + absl::Milliseconds(220));
}

TEST(TimeBudgetTest, SpentIsWhatTheOpenWindowHolds) {
  TimeBudget budget(absl::Milliseconds(100), absl::Milliseconds(5));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(budget.Spent(7, t0), absl::ZeroDuration()) << "nothing charged";
  budget.Charge(7, absl::Milliseconds(2), t0);
  budget.Charge(7, absl::Milliseconds(1), t0 + absl::Milliseconds(50));
  EXPECT_EQ(budget.Spent(7, t0 + absl::Milliseconds(60)), absl::Milliseconds(3));
  EXPECT_EQ(budget.Spent(7, t0 + absl::Milliseconds(100)), absl::ZeroDuration()) << "ended";
}

}  // namespace
}  // namespace halloc
