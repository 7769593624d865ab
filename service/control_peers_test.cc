#include "service/control_peers.h"

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(ControlPeersTest, FindsAConnectionByTheNameGrpcGivesIt) {
  ControlPeers peers;
  peers.Set(12, ucred{100, 1000, 1001});
  std::optional<ControlPeers::Connection> p = peers.Of("fd:12");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->cred.pid, 100);
  EXPECT_EQ(p->cred.uid, 1000u);
  EXPECT_EQ(p->cred.gid, 1001u);
  EXPECT_EQ(p->charged, 1000u);  // its own, unless said
  EXPECT_FALSE(p->start.has_value());
  // The next connection handed over with that number replaces it, all of it.
  peers.Set(12, ucred{200, 2000, 2000}, /*charged=*/1500, /*start=*/77);
  p = peers.Of("fd:12");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->cred.uid, 2000u);
  EXPECT_EQ(p->charged, 1500u);
  EXPECT_EQ(p->start, 77u);
  EXPECT_FALSE(peers.Of("fd:13").has_value());
}

TEST(ControlPeersTest, AConnectionHandedOverWithAReusedNumberHasAnotherName) {
  ControlPeers peers;
  auto name = [&](absl::string_view peer) { return ControlPeers::CallOn(&peers, peer).connection; };
  EXPECT_EQ(name("fd:12"), "fd:12");  // not handed over
  EXPECT_EQ(ControlPeers::CallOn(nullptr, "fd:12").connection, "fd:12");
  peers.Set(12, ucred{100, 1000, 1000});
  const std::string first = name("fd:12");
  EXPECT_EQ(name("fd:12"), first);  // stable while it lasts
  peers.Set(13, ucred{100, 1000, 1000});
  peers.Set(12, ucred{100, 1000, 1000});  // gRPC closed fd 12; a new one got its number
  const std::string second = name("fd:12");
  EXPECT_NE(second, first);
  EXPECT_NE(name("fd:13"), first);
  EXPECT_NE(name("fd:13"), second);
}

// A call's uid and name come from the same connection, as LimitUid says.
TEST(ControlPeersTest, ACallIsJudgedByItsConnectionsChargedUid) {
  ControlPeers peers;
  peers.Set(12, ucred{100, 1000, 1000}, /*charged=*/900);
  const ControlPeers::Call on = ControlPeers::CallOn(&peers, "fd:12");
  EXPECT_EQ(on.limit_uid, 900u);
  EXPECT_EQ(on.limit_uid, ControlPeers::LimitUid(&peers, "fd:12"));
  // Unknown: one shared uid; no peers at all: no per-uid limit.
  EXPECT_EQ(ControlPeers::CallOn(&peers, "fd:13").limit_uid, static_cast<uid_t>(-1));
  EXPECT_EQ(ControlPeers::CallOn(&peers, "fd:13").limit_uid,
            ControlPeers::LimitUid(&peers, "fd:13"));
  EXPECT_FALSE(ControlPeers::CallOn(nullptr, "fd:12").limit_uid.has_value());
}

TEST(ControlPeersTest, KnowsNoOtherName) {
  ControlPeers peers;
  peers.Set(12, ucred{100, 1000, 1000});
  for (const char* name : {"fd:13", "fd:", "fd:-1", "fd:12x", "fd:012a", "unix:/run/x",
                           "ipv4:127.0.0.1:1", "", "12", "fd:99999999999999999999"}) {
    EXPECT_FALSE(peers.Of(name).has_value()) << name;
  }
}

}  // namespace
}  // namespace halloc
