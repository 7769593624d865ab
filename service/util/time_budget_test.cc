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

}  // namespace
}  // namespace halloc
