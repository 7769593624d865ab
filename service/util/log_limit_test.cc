#include "service/util/log_limit.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/wrappers.pb.h"
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

// One uid's flood of a kind of line takes its share of the kind's budget,
// not all of it: another uid's line of that kind still comes through (it
// used to be dropped with the flood's). What was dropped is counted for
// the kind, whoever's it was; the per-uid budgets do not pile up.
TEST(LogLimiterTest, AUidTakesItsShareOfAKindNotAll) {
  LogLimiter limiter(6, absl::Seconds(1), /*per_uid=*/2);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t dropped = 0;
  int flood = 0;
  for (int i = 0; i < 1000; ++i) flood += limiter.AllowForAt("Dump/7", 1000, t0, &dropped);
  EXPECT_EQ(flood, 2);
  EXPECT_TRUE(limiter.AllowForAt("Dump/7", 1001, t0, &dropped));
  EXPECT_EQ(dropped, 998u);
  EXPECT_TRUE(limiter.AllowForAt("Dump/7", 1002, t0, &dropped));
  // The kind's budget still bounds them all together.
  int others = 0;
  for (uint32_t uid = 2000; uid < 3000; ++uid)
    others += limiter.AllowForAt("Dump/7", uid, t0, &dropped);
  EXPECT_EQ(others, 2);
  // A new window renews every budget; thousands of uids over many windows
  // leave no more than a few windows' worth behind.
  for (int w = 1; w <= 100; ++w) {
    for (uint32_t uid = 0; uid < 50; ++uid) {
      limiter.AllowForAt("Dump/7", uid + 100 * w, t0 + absl::Seconds(w), &dropped);
    }
  }
  EXPECT_TRUE(limiter.AllowForAt("Dump/7", 1000, t0 + absl::Seconds(101), &dropped));
  EXPECT_LE(limiter.uids_tracked(), 4u * 6 + 6);
}

// A uid that takes its share of one kind after another (AUDIT: every
// method × code it can make refused) gets no more than its share of all
// kinds together; another uid still has its own; a new window renews it.
TEST(LogLimiterTest, AUidTakingTurnsThroughKindsGetsItsShareOfAllKinds) {
  LogLimiter limiter(20, absl::Seconds(1), /*per_uid=*/4, /*per_uid_all_kinds=*/8);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t dropped = 0;
  int logged = 0;
  for (int kind = 0; kind < 16; ++kind) {
    for (int i = 0; i < 10; ++i) {
      logged += limiter.AllowForAt(absl::StrCat("Method", kind, "/7"), 1000, t0, &dropped);
    }
  }
  EXPECT_EQ(logged, 8);
  // Its refused lines are counted for the kind they were of.
  EXPECT_TRUE(limiter.AllowForAt("Method15/7", 1001, t0, &dropped));
  EXPECT_EQ(dropped, 10u);
  int other = 0;
  for (int kind = 0; kind < 16; ++kind) {
    other += limiter.AllowForAt(absl::StrCat("Method", kind, "/7"), 1001, t0, &dropped);
  }
  EXPECT_EQ(other, 7);  // 8 with the one above
  EXPECT_TRUE(limiter.AllowForAt("Method0/7", 1000, t0 + absl::Seconds(1), &dropped));
}

TEST(LogSafeTest, ALongTextIsCutAndSaysHowLongItWas) {
  const std::string exe = "/" + std::string(4000, '\n');
  std::string expected = "/";
  for (int i = 0; i < 15; ++i) expected += "\\n";
  EXPECT_EQ(LogSafe(exe, 16), expected + "...(4001 bytes)");
  EXPECT_EQ(LogSafe("/usr/bin/cam", 16), "/usr/bin/cam");
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

// libprotobuf logs a line per message whose string field is not UTF-8: a
// client sending such messages in a loop wrote one line each to hallocd's
// stderr. Limited, those lines are a few a second, escaped and cut.
TEST(LimitProtobufLogsTest, AFloodOfBadStringsLogsAFewLines) {
  LimitProtobufLogs();
  const std::string bad("\x0a\x02\xff\n", 4);  // StringValue{value: "\xff\n"}
  testing::internal::CaptureStderr();
  for (int i = 0; i < 200; ++i) {
    google::protobuf::StringValue v;
    EXPECT_FALSE(v.ParseFromString(bad));
  }
  const std::string err = testing::internal::GetCapturedStderr();
  int lines = 0;
  for (absl::string_view l : absl::StrSplit(err, '\n', absl::SkipEmpty())) {
    if (l.find("libprotobuf") == absl::string_view::npos) continue;
    ++lines;
    EXPECT_NE(l.find("invalid UTF-8"), absl::string_view::npos) << l;
  }
  EXPECT_GE(lines, 1) << err;
  // 5 a second: more only if the loop took more than a second or two.
  EXPECT_LE(lines, 15) << err;
}

// Parsed for a uid (the broker names whose record it parses), the lines
// take that uid's share: another uid's line still comes through in the
// same second, which one flood of the first took whole.
TEST(LimitProtobufLogsTest, OneUidsFloodLeavesOthersTheirLines) {
  LimitProtobufLogs();
  absl::SleepFor(absl::Seconds(1.1));  // a window of its own
  // StringValue{value: "\xff\n"} and Any{type_url: "\xfe\n"}: field 1.
  const std::string flood("\x0a\x02\xff\n", 4);
  const std::string other("\x0a\x02\xfe\n", 4);
  testing::internal::CaptureStderr();
  {
    const ScopedParseUid whose(4001);
    for (int i = 0; i < 200; ++i) {
      google::protobuf::StringValue v;
      EXPECT_FALSE(v.ParseFromString(flood));
    }
  }
  {
    const ScopedParseUid whose(4002);
    google::protobuf::Any v;
    EXPECT_FALSE(v.ParseFromString(other));
  }
  const std::string err = testing::internal::GetCapturedStderr();
  int lines = 0;
  for (absl::string_view l : absl::StrSplit(err, '\n', absl::SkipEmpty())) {
    if (l.find("libprotobuf") != absl::string_view::npos) ++lines;
  }
  // The flood's share (2 a second: 4 if the loop crossed a second), then
  // the other uid's one.
  EXPECT_LE(lines, 7) << err;
  EXPECT_NE(err.find("Any.type_url"), std::string::npos) << "the other uid's line was dropped:\n"
                                                         << err;
}

}  // namespace
}  // namespace halloc
