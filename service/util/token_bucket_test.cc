#include "service/util/token_bucket.h"

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(TokenBucketTest, RefillsAtItsRateUpToItsBurst) {
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  TokenBucket b{2, t0};
  EXPECT_DOUBLE_EQ(b.Level(t0, 10, 100), 2);
  EXPECT_DOUBLE_EQ(b.Level(t0 + absl::Seconds(3), 10, 100), 32);
  EXPECT_DOUBLE_EQ(b.Level(t0 + absl::Seconds(60), 10, 100), 100) << "past its burst";
  b.Refill(t0 + absl::Seconds(1), 10, 100);
  EXPECT_DOUBLE_EQ(b.tokens, 12);
  EXPECT_EQ(b.at, t0 + absl::Seconds(1));
  b.tokens -= 20;  // overdrawn: refills from below zero
  EXPECT_DOUBLE_EQ(b.Level(t0 + absl::Seconds(2), 10, 100), 2);
}

}  // namespace
}  // namespace halloc
