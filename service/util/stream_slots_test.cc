#include "service/util/stream_slots.h"

#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(StreamSlotsTest, OneUidGetsItsShareAndEveryoneTheTotal) {
  StreamSlots slots("test streams", /*total=*/4, /*per_uid=*/2);
  std::vector<StreamSlots::Slot> held;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(1000);
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(*std::move(s));
  }
  absl::StatusOr<StreamSlots::Slot> third = slots.Take(1000);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("uid (1000)"), std::string::npos) << third.status();
  // Another uid still gets in, up to the total.
  for (uid_t uid : {1001, 1002}) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(uid);
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(*std::move(s));
  }
  EXPECT_EQ(slots.taken(), 4);
  EXPECT_EQ(slots.Take(1003).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(slots.Take(std::nullopt).status().code(), absl::StatusCode::kResourceExhausted);
  // Given back when a slot goes; moved-from slots give nothing back.
  held.erase(held.begin());
  EXPECT_EQ(slots.taken(), 3);
  EXPECT_TRUE(slots.Take(1000).ok());  // taken and given back at once
  EXPECT_EQ(slots.taken(), 3);
  held.clear();
  EXPECT_EQ(slots.taken(), 0);
}

TEST(StreamSlotsTest, CallersOfUnknownUidAreHeldToTheTotalOnly) {
  StreamSlots slots("test streams", /*total=*/3, /*per_uid=*/1);
  std::vector<StreamSlots::Slot> held;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(std::nullopt);
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(*std::move(s));
  }
  EXPECT_EQ(slots.Take(std::nullopt).status().code(), absl::StatusCode::kResourceExhausted);
}

// A uid whose stream overstayed takes no place of that kind for its
// cool-down (others do), then does again; a caller of unknown uid is
// never held off (it has no uid to hold off).
TEST(StreamSlotsTest, AUidWhoseStreamOverstayedWaitsOutItsCoolDown) {
  StreamSlots slots("test streams", /*total=*/4, /*per_uid=*/2);
  {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(1000);
    ASSERT_TRUE(s.ok()) << s.status();
    s->Overstayed(absl::Hours(1));
  }
  EXPECT_EQ(slots.taken(), 0) << "its place is free";
  absl::StatusOr<StreamSlots::Slot> again = slots.Take(1000);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(again.status().message().find("outstayed its time"), std::string::npos)
      << again.status();
  EXPECT_TRUE(slots.Take(1001).ok()) << "another uid takes the freed place";
  {
    absl::StatusOr<StreamSlots::Slot> unknown = slots.Take(std::nullopt);
    ASSERT_TRUE(unknown.ok());
    unknown->Overstayed(absl::Hours(1));
  }
  EXPECT_TRUE(slots.Take(std::nullopt).ok());
  // A cool-down that has passed holds nothing off.
  {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(1002);
    ASSERT_TRUE(s.ok()) << s.status();
    s->Overstayed(absl::Milliseconds(1));
  }
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_TRUE(slots.Take(1002).ok());
}

// A stream its client ends itself holds its uid off as an overstayed one
// would once it held its place for half its lifetime, or went half its idle
// time without a request: ending each stream just before the cut and
// reopening kept the places before. One done at once (an honest client's)
// holds nothing off.
TEST(StreamSlotsTest, AStreamEndedNearItsBoundCoolsItsUidDownToo) {
  StreamSlots slots("test streams", /*total=*/4, /*per_uid=*/2);
  const absl::Duration inf = absl::InfiniteDuration();
  auto ended = [&](uid_t uid, absl::Duration idle, absl::Duration lifetime,
                   absl::Duration wait_before, absl::Duration wait_after) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(uid);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return false;
    absl::SleepFor(wait_before);
    s->Active();
    absl::SleepFor(wait_after);
    return s->Ended(idle, lifetime, absl::Hours(1));
  };
  const absl::Duration none = absl::ZeroDuration(), some = absl::Milliseconds(120);
  // Lifetime 200 ms: done at once, then after 120 ms (past half).
  EXPECT_FALSE(ended(1000, inf, absl::Milliseconds(200), none, none));
  EXPECT_TRUE(slots.Take(1000).ok()) << "an honest stream's uid held off";
  EXPECT_TRUE(ended(1001, inf, absl::Milliseconds(200), some, none));
  EXPECT_EQ(slots.Take(1001).status().code(), absl::StatusCode::kResourceExhausted);
  // Idle 200 ms: a request 120 ms in, ended at once after it; then ended
  // 120 ms after its last request.
  EXPECT_FALSE(ended(1002, absl::Milliseconds(200), inf, some, none));
  EXPECT_TRUE(slots.Take(1002).ok());
  EXPECT_TRUE(ended(1003, absl::Milliseconds(200), inf, none, some));
  EXPECT_EQ(slots.Take(1003).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(slots.taken(), 0);
}

}  // namespace
}  // namespace halloc
