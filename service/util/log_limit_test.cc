#include "service/util/log_limit.h"

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(LogLimiterTest, AllowsABudgetPerWindowAndCountsWhatItDropped) {
  LogLimiter limiter(3, absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t dropped = 99;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(limiter.AllowAt("accept", t0, &dropped));
    EXPECT_EQ(dropped, 0u);
  }
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(limiter.AllowAt("accept", t0, &dropped));
  // Another kind has its own budget.
  EXPECT_TRUE(limiter.AllowAt("refused", t0, &dropped));
  // The next window: allowed again, and told how many were dropped.
  ASSERT_TRUE(limiter.AllowAt("accept", t0 + absl::Seconds(1), &dropped));
  EXPECT_EQ(dropped, 1000u);
  ASSERT_TRUE(limiter.AllowAt("accept", t0 + absl::Seconds(1), &dropped));
  EXPECT_EQ(dropped, 0u);
  EXPECT_EQ(LogLimiter::Dropped(0), "");
  EXPECT_EQ(LogLimiter::Dropped(1000), " (1000 similar lines dropped)");
}

TEST(LogSafeTest, ANewlineCannotStartAForgedLine) {
  const std::string exe = "/tmp/x\nW1201 12:00:00.000000 1 grpc_service.cc:15] AUDIT ok";
  const std::string safe = LogSafe(exe);
  EXPECT_EQ(safe.find('\n'), std::string::npos);
  EXPECT_NE(safe.find("\\n"), std::string::npos);
  EXPECT_EQ(LogSafe("/usr/bin/cam"), "/usr/bin/cam");
  EXPECT_EQ(LogSafe(std::string("\xff\x1b[31m", 6)), "\\xff\\x1b[31m");
}

TEST(Utf8OrEscapedTest, KeepsUtf8AndEscapesTheRest) {
  EXPECT_EQ(Utf8OrEscaped("/usr/bin/cam"), "/usr/bin/cam");
  EXPECT_EQ(Utf8OrEscaped("/opt/caf\xc3\xa9"), "/opt/caf\xc3\xa9");
  EXPECT_EQ(Utf8OrEscaped("/tmp/\xff"), "/tmp/\\xff");
  EXPECT_EQ(Utf8OrEscaped("/tmp/caf\xc3"), "/tmp/caf\\xc3") << "a cut sequence";
}

}  // namespace
}  // namespace halloc
