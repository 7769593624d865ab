#include "service/connection_limits.h"

#include <sys/resource.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

std::shared_ptr<const Policy> Limits(uint32_t per_uid, uint32_t total) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      absl::StrCat("clients { name: \"none\" match { any: true } }\n"
                   "sessions { max_per_uid: ", per_uid, " max_total: ", total, " }"),
      "connection_limits_test");
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// A uid that is neither root nor this process's.
uid_t Someone() { return ::getuid() == 1234 ? 1235 : 1234; }

TEST(ConnectionLimitsTest, OperatorsAreRootAndTheDaemonsUid) {
  EXPECT_TRUE(IsOperatorUid(0));
  EXPECT_TRUE(IsOperatorUid(getuid()));
  EXPECT_FALSE(IsOperatorUid(getuid() == 1001 ? 1002 : 1001));
}

TEST(ConnectionLimitsTest, BoundsEachUidAndTheTotal) {
  auto p = Limits(2, 5);
  EXPECT_TRUE(AdmitConnection(*p, Someone(), {1, 1}, "x").ok());
  absl::Status s = AdmitConnection(*p, Someone(), {2, 2}, "control connections");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "2 control connections; the limit per uid is 2"))
      << s;
  s = AdmitConnection(*p, Someone(), {0, 5}, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "sessions.max_total")) << s;
}

TEST(ConnectionLimitsTest, AdminsHaveNoPerUidLimitAndAReserve) {
  auto p = Limits(2, 5);
  EXPECT_TRUE(AdmitConnection(*p, 0, {50, 5}, "x").ok());
  EXPECT_TRUE(AdmitConnection(*p, ::getuid(), {50, 5 + kAdminConnectionReserve - 1}, "x").ok());
  EXPECT_FALSE(AdmitConnection(*p, 0, {50, 5 + kAdminConnectionReserve}, "x").ok());
}

TEST(ConnectionLimitsTest, ZeroMeansTheDefaults) {
  auto p = Limits(0, 0);
  EXPECT_TRUE(AdmitConnection(*p, Someone(), {kDefaultMaxConnectionsPerUid - 1, 0}, "x").ok());
  EXPECT_FALSE(AdmitConnection(*p, Someone(), {kDefaultMaxConnectionsPerUid, 0}, "x").ok());
  EXPECT_FALSE(AdmitConnection(*p, Someone(), {0, DefaultMaxConnections()}, "x").ok());
  EXPECT_GE(DefaultMaxConnections(), 16u);
}

TEST(ConnectionLimitsTest, BothSocketsFullLeaveHalfOfTheFdsToBuffers) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur < 256) {
    GTEST_SKIP() << "fd limit " << lim.rlim_cur << ": the floor of 16 decides";
  }
  // Two sockets, two fds per connection on either.
  EXPECT_LE(2 * 2 * uint64_t{DefaultMaxConnections()}, lim.rlim_cur / 2);
}

TEST(ConnectionLimitsTest, BuffersGetWhatConnectionsStockAndHallocdLeave) {
  // 20000 fds, 100 connections per socket (and the admins' 16): 4 * 116
  // fds for connections, 2048 stocked, kHallocdOwnFds.
  EXPECT_EQ(BufferRoom(*Limits(0, 100), 20000, 2048),
            20000 - 4 * (100 + kAdminConnectionReserve) - 2048 - kHallocdOwnFds);
  // The default total is an eighth of the limit: half of it for connections.
  EXPECT_EQ(BufferRoom(*Limits(0, 0), 20000, 0),
            20000 - 4 * (20000 / 8 + kAdminConnectionReserve) - kHallocdOwnFds);
  // Connections allowed more than the table has: buffers keep a quarter.
  EXPECT_EQ(BufferRoom(*Limits(0, 100000), 20000, 2048), 5000u);
  EXPECT_EQ(BufferRoom(*Limits(0, 0), 64, 2048), 16u);
  // No fd limit, no buffer limit.
  EXPECT_EQ(BufferRoom(*Limits(0, 0), 0, 2048), 0u);
}

// Through the relay (kernels before 6.16) a control connection costs four
// fds: the defaults and the buffers' room count them, so that everything
// hallocd may open still fits its fd limit.
TEST(ConnectionLimitsTest, RelayedControlConnectionsCountFourFds) {
  SetControlConnectionFds(4);
  EXPECT_EQ(BufferRoom(*Limits(0, 100), 20000, 2048),
            20000 - 6 * (100 + kAdminConnectionReserve) - 2048 - kHallocdOwnFds);
  const uint64_t total = 20000 / 12;  // the default: a twelfth
  const uint64_t room = BufferRoom(*Limits(0, 0), 20000, 0);
  EXPECT_EQ(room, 20000 - 6 * (total + kAdminConnectionReserve) - kHallocdOwnFds);
  EXPECT_LE(6 * (total + kAdminConnectionReserve) + room + kHallocdOwnFds, 20000u);
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur >= 256) {
    EXPECT_LE(6 * uint64_t{DefaultMaxConnections()}, lim.rlim_cur / 2);
  }
  SetControlConnectionFds(2);
  EXPECT_EQ(BufferRoom(*Limits(0, 0), 20000, 0),
            20000 - 4 * (20000 / 8 + kAdminConnectionReserve) - kHallocdOwnFds);
}

}  // namespace
}  // namespace halloc
