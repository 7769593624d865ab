#include "service/connection_limits.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/peer_identity.h"
#include "service/util/id_map.h"

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

// Tests key by the ranges they write, not by this machine's /etc/subuid.
constexpr char kNoRanges[] = "/nonexistent/subuid";
[[maybe_unused]] const bool kMachineRangesUnread = [] {
  SetSubordinateUidFile(kNoRanges);
  return true;
}();

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

// How many connections of `uid` `rate` admits at `now`, asked until one
// is refused (at most `most`).
int AdmittedAt(ConnectRate& rate, ConnectRate::Limits p, uid_t uid, absl::Time now,
               int most = 1000) {
  int n = 0;
  while (n < most && rate.Admit(p, uid, now, "x").ok()) ++n;
  return n;
}

TEST(ConnectRateTest, ABurstOfTwiceTheRateThenTheRate) {
  constexpr ConnectRate::Limits p{10, 20};
  ConnectRate rate;
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  EXPECT_EQ(AdmittedAt(rate, p, Someone(), t0), 20);
  absl::Status s = rate.Admit(p, Someone(), t0, "broker connections");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "opens broker connections faster than 10 a second"))
      << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "sessions.connects_per_second")) << s;
  // A tenth of a second earns one; half a second five; a long pause no more
  // than the burst.
  EXPECT_EQ(AdmittedAt(rate, p, Someone(), t0 + absl::Milliseconds(100)), 1);
  EXPECT_EQ(AdmittedAt(rate, p, Someone(), t0 + absl::Milliseconds(600)), 5);
  EXPECT_EQ(AdmittedAt(rate, p, Someone(), t0 + absl::Hours(1)), 20);
}

TEST(ConnectRateTest, SaysHowSoonARefusedUidHasRoomAgain) {
  constexpr ConnectRate::Limits p{10, 20};
  ConnectRate rate;
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  EXPECT_EQ(AdmittedAt(rate, p, Someone(), t0), 20);
  // A tenth of a second from empty, less once some has been earned back.
  absl::Duration retry = absl::ZeroDuration();
  EXPECT_FALSE(rate.Admit(p, Someone(), t0, "x", &retry).ok());
  EXPECT_EQ(retry, absl::Milliseconds(100));
  EXPECT_FALSE(rate.Admit(p, Someone(), t0 + absl::Milliseconds(40), "x", &retry).ok());
  EXPECT_LT(absl::AbsDuration(retry - absl::Milliseconds(60)), absl::Microseconds(1));
  EXPECT_TRUE(
      rate.Admit(p, Someone(), t0 + absl::Milliseconds(40) + retry + absl::Microseconds(1), "x")
          .ok());
}

TEST(ConnectRateTest, EachUidHasItsOwnBucketAndOperatorsNone) {
  constexpr ConnectRate::Limits p{10, 20};
  ConnectRate rate;
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  EXPECT_EQ(AdmittedAt(rate, p, 1234, t0), 20);
  EXPECT_EQ(AdmittedAt(rate, p, 1235, t0), 20);  // not 1234's
  EXPECT_EQ(AdmittedAt(rate, p, 0, t0), 1000);
  EXPECT_EQ(AdmittedAt(rate, p, ::getuid(), t0), 1000);
  EXPECT_EQ(rate.uids_tracked(), 2u);
}

// The policy's rate, in bursts of twice that or of the connections a uid
// may hold, whichever is more (a uid may open all it may hold at once).
TEST(ConnectRateTest, ThePolicysRateAndBurst) {
  ConnectRate::Limits l = ConnectRate::Of(*Policy::Default());
  EXPECT_EQ(l.per_second, kDefaultConnectsPerSecond);
  EXPECT_EQ(l.burst, std::max(2 * kDefaultConnectsPerSecond, kDefaultMaxConnectionsPerUid));
  ConnectRate rate;
  EXPECT_EQ(AdmittedAt(rate, l, Someone(), absl::UnixEpoch()), static_cast<int>(l.burst));
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"none\" match { any: true } }\n"
      "sessions { max_per_uid: 4 connects_per_second: 30 }",
      "connection_limits_test");
  ASSERT_TRUE(p.ok()) << p.status();
  l = ConnectRate::Of(**p);
  EXPECT_EQ(l.per_second, 30u);
  EXPECT_EQ(l.burst, 60u);
  p = Policy::Parse(
      "clients { name: \"none\" match { any: true } }\n"
      "sessions { max_per_uid: 500 connects_per_second: 30 }",
      "connection_limits_test");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(ConnectRate::Of(**p).burst, 500u);
}

TEST(ConnectRateTest, ForgetsUidsWhoseBucketsFilledAgain) {
  constexpr ConnectRate::Limits p{10, 20};
  ConnectRate rate;
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  // Ten thousand uids connect once each within a second: no bucket is full
  // again within it, so all are kept...
  for (uid_t uid = 10000; uid < 20000; ++uid) {
    ASSERT_TRUE(rate.Admit(p, uid, t0 + absl::Microseconds(uid - 10000), "x").ok());
  }
  EXPECT_EQ(rate.uids_tracked(), 10000u);
  // ...and a second later every one of them is full again: the next sweep
  // (once the map grows to twice its last size) drops them, and the map
  // stays bounded by the uids of the last second or so.
  for (uid_t uid = 20000; uid < 40000; ++uid) {
    ASSERT_TRUE(rate.Admit(p, uid, t0 + absl::Seconds(5), "x").ok());
  }
  EXPECT_LT(rate.uids_tracked(), 20001u);
  EXPECT_GE(rate.uids_tracked(), 1u);
  // A uid still draining is kept across a sweep: it stays limited.
  ConnectRate kept;
  EXPECT_EQ(AdmittedAt(kept, p, Someone(), t0), 20);
  for (uid_t uid = 10000; uid < 10200; ++uid) ASSERT_TRUE(kept.Admit(p, uid, t0, "x").ok());
  EXPECT_EQ(AdmittedAt(kept, p, Someone(), t0), 0);
}

// Every uid of one user's ranges in the subuid file draws on one bucket
// (the subordinate uids newuidmap lets it connect as); each 65,536-uid
// slice of root's ranges (containers') on one of its own. Uids outside
// every range keep buckets of their own.
TEST(ConnectRateTest, AUsersRangesAreOneBucketAndRootsASliceEach) {
  testing::TempDir dir("connect-rate-subuid", 0755);
  std::ofstream(dir / "subuid") << "alice:100000:65536\n"
                                   "alice:500000:200000\n"
                                   "bob:165536:65536\n"
                                   "root:1000000:131072\n";
  ASSERT_EQ(::chmod((dir / "subuid").c_str(), 0644), 0);  // whatever the umask
  SetSubordinateUidFile(dir / "subuid");
  ConnectRate rate;
  SetSubordinateUidFile(kNoRanges);
  constexpr ConnectRate::Limits p{10, 20};
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  int admitted = 0;
  absl::Status refused;
  for (uid_t uid = 100000; uid < 100100; ++uid) {
    absl::Status s = rate.Admit(p, uid, t0, "broker connections");
    if (s.ok()) ++admitted;
    if (!s.ok() && refused.ok()) refused = s;
  }
  EXPECT_EQ(admitted, 20);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(refused.message(),
                                "uid 100020 (with every uid of the ranges of \"alice\" in " +
                                    (dir / "subuid") +
                                    ", rated as one) opens broker connections faster than 10 a "
                                    "second"))
      << refused;
  // alice's other range, past its first slice too: hers.
  EXPECT_EQ(AdmittedAt(rate, p, 165535, t0), 0);
  EXPECT_EQ(AdmittedAt(rate, p, 500000, t0), 0);
  EXPECT_EQ(AdmittedAt(rate, p, 650000, t0), 0);
  EXPECT_EQ(AdmittedAt(rate, p, 165536, t0), 20);  // bob's
  EXPECT_EQ(AdmittedAt(rate, p, 99999, t0), 20);   // outside: its own
  // Root's range: a bucket per slice.
  EXPECT_EQ(AdmittedAt(rate, p, 1000000, t0), 20);
  absl::Status root_refused = rate.Admit(p, 1065535, t0, "broker connections");
  EXPECT_TRUE(
      absl::StrContains(root_refused.message(),
                        "uid 1065535 (with the uids 1000000-1065535 of a range of root's in " +
                            (dir / "subuid") + ", rated as one)"))
      << root_refused;
  EXPECT_EQ(AdmittedAt(rate, p, 1065536, t0), 20);
  EXPECT_TRUE(rate.SameBucket(100000, 650000, t0));
  EXPECT_FALSE(rate.SameBucket(100000, 165536, t0));
  EXPECT_FALSE(rate.SameBucket(100000, 1000, t0));
  EXPECT_FALSE(rate.SameBucket(1000000, 1065536, t0));
  EXPECT_TRUE(rate.SameBucket(1000, 1000, t0));
  // A refusal is charged as its bucket's uid.
  EXPECT_EQ(rate.RefusedAs(650000, t0), 100000u);    // alice's lowest range
  EXPECT_EQ(rate.RefusedAs(165540, t0), 165536u);    // bob's
  EXPECT_EQ(rate.RefusedAs(1065540, t0), 1065536u);  // root's slice
  EXPECT_EQ(rate.RefusedAs(99999, t0), 99999u);
}

// A container's map as a process of it showed it (ContainerCharged),
// remembered for a "namespace" that is any file: the cache goes by inode.
void RememberContainer(const testing::TempDir& dir, const std::string& name,
                       const std::string& uid_map) {
  std::ofstream(dir / name) << "";
  const UniqueFd ns(::open((dir / name).c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ns) << name;
  absl::StatusOr<IdMap> map = IdMap::Parse(uid_map);
  ASSERT_TRUE(map.ok()) << map.status();
  RememberNamespaceRoot(ns.get(), *map);
}

// What NamespaceRoot remembers is process-wide: forgotten before and after.
class ForgettingNamespaceRoots {
 public:
  ForgettingNamespaceRoots() { ForgetNamespaceRoots(); }
  ~ForgettingNamespaceRoots() { ForgetNamespaceRoots(); }
};

TEST(ConnectRateTest, AContainersUidsAreOneBucketOnceItsMapIsKnown) {
  ForgettingNamespaceRoots forgetting;
  testing::TempDir dir("connect-rate-containers", 0755);
  std::ofstream(dir / "subuid") << "root:1000000:131072\n";
  ASSERT_EQ(::chmod((dir / "subuid").c_str(), 0644), 0);
  SetSubordinateUidFile(dir / "subuid");
  ConnectRate before, after;
  SetSubordinateUidFile(kNoRanges);
  constexpr ConnectRate::Limits p{10, 20};
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  // Unlisted, map unknown: a bucket per uid.
  for (uid_t uid = 2000000; uid < 2000040; ++uid) {
    EXPECT_TRUE(before.Admit(p, uid, t0, "broker connections").ok()) << uid;
  }
  // Known (no listed range): one bucket, charged as its root.
  RememberContainer(dir, "unlisted", "0 2000000 65536");
  int admitted = 0;
  absl::Status refused;
  for (uid_t uid = 2000000; uid < 2000100; ++uid) {
    absl::Status s = after.Admit(p, uid, t0, "broker connections");
    if (s.ok()) ++admitted;
    if (!s.ok() && refused.ok()) refused = s;
  }
  EXPECT_EQ(admitted, 20);
  EXPECT_TRUE(absl::StrContains(
      refused.message(),
      "uid 2000020 (with every uid of the container whose root is uid 2000000, rated as one)"))
      << refused;
  EXPECT_EQ(AdmittedAt(after, p, 2065535, t0), 0);   // its last
  EXPECT_EQ(AdmittedAt(after, p, 2065536, t0), 20);  // past it: its own
  EXPECT_EQ(after.RefusedAs(2000050, t0), 2000000u);
  EXPECT_TRUE(after.SameBucket(2000000, 2065535, t0));
  EXPECT_FALSE(after.SameBucket(2000000, 2065536, t0));
  // Two containers of 1,024 uids in one slice of root's range: one
  // bucket each (the slice alone made them one).
  RememberContainer(dir, "first", "0 1000000 1024");
  RememberContainer(dir, "second", "0 1001024 1024");
  EXPECT_EQ(AdmittedAt(after, p, 1000000, t0), 20);
  EXPECT_EQ(AdmittedAt(after, p, 1001024, t0), 20);
  EXPECT_EQ(after.RefusedAs(1001030, t0), 1001024u);
  EXPECT_EQ(after.RefusedAs(1002048, t0), 1000000u);  // its slice's, known of no container
  // A host user's uid an idmap shares into a container stays the user's:
  // a login's, a directory's (one uid), a range mapped to itself. (Not the
  // test's own uid, which no rate limits: a user's run.)
  const uid_t login = ::getuid() == 1000 ? 1001 : 1000;
  RememberContainer(
      dir, "sharing",
      absl::StrCat("0 3000000 65536\n65536 ", login, " 1\n65537 1500000 1\n70000 70000 10"));
  EXPECT_EQ(AdmittedAt(after, p, 3000000, t0), 20);
  for (uid_t shared : {login, uid_t{1500000}, uid_t{70005}}) {
    EXPECT_EQ(AdmittedAt(after, p, shared, t0), 20) << shared;
    EXPECT_EQ(after.RefusedAs(shared, t0), shared);
  }
  // A removed container's uids given to new ones (Podman's --userns=auto
  // reuses freed ranges, in other sizes): the newest map read decides.
  RememberContainer(dir, "removed", "0 4000000 65536");
  RememberContainer(dir, "reusing", "0 4000000 1024");
  RememberContainer(dir, "beside", "0 4001024 1024");
  EXPECT_EQ(after.RefusedAs(4001030, t0), 4001024u);
  EXPECT_EQ(after.RefusedAs(4000005, t0), 4000000u);
  EXPECT_EQ(after.RefusedAs(4002048, t0), 4000000u);  // the removed one's alone
}

}  // namespace
}  // namespace halloc
