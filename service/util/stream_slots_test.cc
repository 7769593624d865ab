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
  EXPECT_NE(again.status().message().find("outstaying its time"), std::string::npos)
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

// With a budget, a uid whose streams held places for `allowed` in all
// within the window takes none until the window ends, however each stream
// ended: ending each one just before the cut and opening another kept the
// places before. Streams done at once use next to nothing of it; other
// uids and callers of unknown uid are not held to it.
TEST(StreamSlotsTest, AUidWhoseStreamsUsedTheirBudgetWaitsForTheWindowToEnd) {
  StreamSlots slots("test streams", /*total=*/4, /*per_uid=*/2,
                    {absl::Milliseconds(100), absl::Milliseconds(800)});
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(1000);
    ASSERT_TRUE(s.ok()) << i << ": " << s.status();
  }
  // Two streams of 60 ms: 120 ms held, past the 100 ms allowed.
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<StreamSlots::Slot> s = slots.Take(1001);
    ASSERT_TRUE(s.ok()) << s.status();
    absl::SleepFor(absl::Milliseconds(60));
  }
  absl::StatusOr<StreamSlots::Slot> refused = slots.Take(1001);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("held their places for 100ms or more within 800ms"),
            std::string::npos)
      << refused.status();
  EXPECT_TRUE(slots.Take(1000).ok()) << "another uid is held to its own budget";
  {
    absl::StatusOr<StreamSlots::Slot> unknown = slots.Take(std::nullopt);
    ASSERT_TRUE(unknown.ok());
    absl::SleepFor(absl::Milliseconds(150));
  }
  EXPECT_TRUE(slots.Take(std::nullopt).ok());
  // The window (from 1001's first stream's end) ends: a fresh budget.
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_TRUE(slots.Take(1001).ok());
  EXPECT_EQ(slots.taken(), 0);
}

// Streams still open count too: a uid holding one place past the budget
// takes no second (else `per_uid` streams opened together, each ended
// just short of the cut, held their places a whole window more).
TEST(StreamSlotsTest, OpenStreamsCountAgainstTheBudget) {
  StreamSlots slots("test streams", /*total=*/4, /*per_uid=*/2,
                    {absl::Milliseconds(100), absl::Seconds(10)});
  absl::StatusOr<StreamSlots::Slot> open = slots.Take(1000);
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_TRUE(slots.Take(1000).ok()) << "nothing held long yet";
  absl::SleepFor(absl::Milliseconds(120));
  absl::StatusOr<StreamSlots::Slot> second = slots.Take(1000);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_TRUE(slots.Take(1001).ok());
}

}  // namespace
}  // namespace halloc
