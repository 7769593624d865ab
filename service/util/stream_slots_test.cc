#include "service/util/stream_slots.h"

#include <vector>

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

}  // namespace
}  // namespace halloc
