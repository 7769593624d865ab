// CallsPerUid's counting (the gRPC side is reply_watch_test's
// OneUidHasAtMostItsLimitOfCallsInFlight, on a server with hallocd's limits).
#include "service/calls_per_uid.h"

#include <unistd.h>

#include <vector>

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(CallsPerUidTest, EachUidHasItsOwnLimit) {
  CallsPerUid calls(2);
  EXPECT_TRUE(calls.Admit(1001));
  EXPECT_TRUE(calls.Admit(1001));
  EXPECT_FALSE(calls.Admit(1001)) << "a third call in flight";
  EXPECT_EQ(calls.in_flight(1001), 2) << "a refused call is not counted";
  EXPECT_TRUE(calls.Admit(1002)) << "another uid is not held to 1001's";
  calls.End(1001);
  EXPECT_TRUE(calls.Admit(1001)) << "one ended: room again";
  calls.End(1001);
  calls.End(1001);
  calls.End(1002);
  EXPECT_EQ(calls.in_flight(1001), 0);
  EXPECT_EQ(calls.in_flight(1002), 0);
  calls.End(1001);  // more ends than calls (cannot happen) count nothing below 0
  EXPECT_EQ(calls.in_flight(1001), 0);
}

// A uid whose calls are refused more than kFloodRefusals times within
// kFloodWindow floods: the callback (hallocd cuts its connections) is told
// once, and the count starts again.
TEST(CallsPerUidTest, AUidRefusedOnAndOnIsReportedAsFlooding) {
  std::vector<uid_t> flooded;
  CallsPerUid calls(1, nullptr, [&](uid_t uid) { flooded.push_back(uid); });
  ASSERT_TRUE(calls.Admit(1001));
  ASSERT_TRUE(calls.Admit(1002));
  for (int i = 0; i < CallsPerUid::kFloodRefusals; ++i) {
    ASSERT_FALSE(calls.Admit(1001));
    ASSERT_FALSE(calls.Admit(1002));
  }
  EXPECT_TRUE(flooded.empty()) << "at the threshold, not past it";
  EXPECT_FALSE(calls.Admit(1001));
  EXPECT_EQ(flooded, std::vector<uid_t>{1001});
  EXPECT_FALSE(calls.Admit(1001));
  EXPECT_EQ(flooded, std::vector<uid_t>{1001}) << "counted again from zero";
}

// Root, hallocd's own uid (administrators, the watchdog's probe) and calls
// of no known uid (an in-process channel) are not limited.
TEST(CallsPerUidTest, RootHallocdsUidAndUnknownCallersAreNotLimited) {
  CallsPerUid calls(1);
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(calls.Admit(0));
    EXPECT_TRUE(calls.Admit(::getuid()));
    EXPECT_TRUE(calls.Admit(std::nullopt));
  }
  EXPECT_EQ(calls.in_flight(0), 0);
  EXPECT_TRUE(calls.Admit(4242));
  EXPECT_FALSE(calls.Admit(4242));
}

}  // namespace
}  // namespace halloc
