#include "service/h2_guard.h"

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "service/http2_testing.h"

namespace halloc {
namespace {

using http2_testing::kContinuation;
using http2_testing::kData;
using http2_testing::kEndHeaders;
using http2_testing::kHeaders;
using http2_testing::kPreface;
using http2_testing::kRstStream;
using http2_testing::kSettings;
using http2_testing::SizedFrame;

// A client's usual stream: SETTINGS, a call (HEADERS, DATA), a cancel.
TEST(H2GuardTest, CountsResetsAndPassesAnOrdinaryStream) {
  const std::string stream = std::string(kPreface) + SizedFrame(kSettings, 0, 0, 12) +
                             SizedFrame(kHeaders, kEndHeaders, 1, 300) +
                             SizedFrame(kData, 1, 1, 5000) + SizedFrame(kRstStream, 0, 1, 4) +
                             SizedFrame(kHeaders, kEndHeaders, 3, 200) +
                             SizedFrame(kRstStream, 0, 3, 4);
  H2Guard whole;
  absl::StatusOr<uint32_t> resets = whole.Feed(stream);
  ASSERT_TRUE(resets.ok()) << resets.status();
  EXPECT_EQ(*resets, 2u);
  // Byte by byte (frame headers split anywhere): the same.
  H2Guard split;
  uint32_t total = 0;
  for (char c : stream) {
    absl::StatusOr<uint32_t> r = split.Feed(std::string(1, c));
    ASSERT_TRUE(r.ok()) << r.status();
    total += *r;
  }
  EXPECT_EQ(total, 2u);
  // A block in the most frames allowed, each of one byte: passes.
  H2Guard most;
  std::string block = std::string(kPreface) + SizedFrame(kHeaders, 0, 5, 1);
  for (uint32_t i = 2; i < H2Guard::kMaxHeaderBlockFrames; ++i) {
    block += SizedFrame(kContinuation, 0, 5, 1);
  }
  block += SizedFrame(kContinuation, kEndHeaders, 5, 1) + SizedFrame(kHeaders, kEndHeaders, 7, 100);
  EXPECT_TRUE(most.Feed(block).ok());
}

// A value trickled in CONTINUATION frames (CVE-2023-33953's quadratic
// parse) or a block that never ends: refused at the first frame past the
// bounds, and for good.
TEST(H2GuardTest, RefusesAHeaderBlockOfTooManyFramesOrBytes) {
  H2Guard frames;
  std::string trickle = std::string(kPreface) + SizedFrame(kHeaders, 0, 1, 1);
  for (uint32_t i = 1; i < H2Guard::kMaxHeaderBlockFrames; ++i) {
    trickle += SizedFrame(kContinuation, 0, 1, 1);
  }
  ASSERT_TRUE(frames.Feed(trickle).ok());
  absl::StatusOr<uint32_t> r = frames.Feed(SizedFrame(kContinuation, 0, 1, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_FALSE(frames.Feed(SizedFrame(kSettings, 0, 0, 0)).ok()) << "refused, then let go on";

  H2Guard bytes;
  ASSERT_TRUE(bytes.Feed(std::string(kPreface) + SizedFrame(kHeaders, 0, 1, 16384)).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(bytes.Feed(SizedFrame(kContinuation, 0, 1, 16384)).ok());
  // The refusal comes with the header: the payload is never waited for.
  r = bytes.Feed(SizedFrame(kContinuation, 0, 1, 1).substr(0, 9));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();

  // A block ends with END_HEADERS: the next block is counted afresh.
  H2Guard blocks;
  std::string many = kPreface;
  for (int i = 0; i < 100; ++i) many += SizedFrame(kHeaders, kEndHeaders, 2 * i + 1, 60000);
  EXPECT_TRUE(blocks.Feed(many).ok());
}

}  // namespace
}  // namespace halloc
