// Revoke in the registry: which views a live revoke cuts, which grants and
// holds a revoke (live or not) reaches down the routes, and the bounds on
// what imports leave behind.
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "service/registry.h"
#include "service/registry_testing.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

// Live revoke: an import's views come back to be cut off, and a session
// that held the buffer only through that grant stops holding it.
TEST_F(RegistryTest, LiveRevokeCutsTheImportsOfThatGrantOnly) {
  const uint64_t id = AddN(kA, 1)[0];
  auto first = ShareTo(kA, id, 2);
  ASSERT_TRUE(first.ok());
  auto second = ShareTo(kA, id, 2, CpuAccess::kReadWrite);
  ASSERT_TRUE(second.ok());

  auto imported = reg_.Import(kB, first->token(), Accept);
  ASSERT_TRUE(imported.ok());
  EXPECT_EQ(imported->grant_id, first->id());
  ASSERT_TRUE(reg_.AddImportView(kB, first->id(), id, CpuAccess::kRead, 501).ok());
  ASSERT_TRUE(reg_.AddImportView(kB, first->id(), id, CpuAccess::kRead, 502).ok());
  ASSERT_TRUE(ImportView(kB, *second, id, CpuAccess::kReadWrite, 503));
  // The owner imports its own grant too: its own route remains after.
  ASSERT_TRUE(ImportView(kA, *first, id, CpuAccess::kRead, 504));

  // Revoking the read-write grant cuts view 503; B keeps the read route.
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, second->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->views, std::vector<uint64_t>{503});
  ASSERT_NE(r->buffer, nullptr);
  EXPECT_EQ(r->buffer->id, id);
  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kB, id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ) << "narrowed to what is left";

  // Revoking the other: B had no other route and stops holding it; the
  // owner keeps its own (read-write) rights.
  r = reg_.Revoke(kA, first->id(), true);
  ASSERT_TRUE(r.ok());
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{501, 502, 504}));
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  d = reg_.Describe(kA, id);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ_WRITE);
  // A view noted after the revoke (an import racing it) is refused.
  EXPECT_EQ(reg_.AddImportView(kB, first->id(), id, CpuAccess::kRead, 505).code(),
            StatusCode::kNotFound);
}

// A live revoke reaches what was shared on from the holds it cuts: before,
// B kept a revoked buffer by granting it to itself first and importing
// that grant afterwards, and C, who imported from B, was never cut off.
TEST_F(RegistryTest, LiveRevokeReachesGrantsSharedOnFromWhatItCuts) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = ShareTo(kA, id, 2);
  auto also_to_b = ShareTo(kA, id, 2);
  ASSERT_TRUE(to_b.ok() && also_to_b.ok());
  ASSERT_TRUE(ImportView(kB, *to_b, id, CpuAccess::kRead, 601));
  // B shares on: to itself, and to C, who imports.
  auto b_to_b = ShareTo(kB, id, 2);
  auto b_to_c = ShareTo(kB, id, 3);
  ASSERT_TRUE(b_to_b.ok() && b_to_c.ok());
  ASSERT_TRUE(ImportView(kC, *b_to_c, id, CpuAccess::kRead, 602));

  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, to_b->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{601, 602}));
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Import(kB, b_to_b->token(), Accept).status().code(), StatusCode::kNotFound)
      << "B got the revoked buffer back through its own grant";
  // The owner's other grant was not derived from the revoked one.
  EXPECT_TRUE(reg_.Import(kB, also_to_b->token(), Accept).ok());
  EXPECT_TRUE(reg_.Describe(kA, id).ok());
}

// The granter need not hold any more: a grant made from a route dies with
// the route even after its granter released the buffer.
TEST_F(RegistryTest, LiveRevokeReachesGrantsOfAGranterThatReleased) {
  const Onward o = OnwardToC(/*c_imports=*/false);
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(reg_.Release(kB, {o.id}).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, o.to_b.id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(reg_.Import(kC, o.b_to_c.token(), Accept).status().code(), StatusCode::kNotFound);
}

// A granter whose session ended leaves its onward grants' imports
// revocable: revoking the grant it imported through still cuts off those
// who imported from it (they still hold, or let go with the fd kept).
TEST_F(RegistryTest, LiveRevokeReachesImportsOfAGranterWhoseSessionEnded) {
  const Onward o = OnwardToC();
  ASSERT_FALSE(HasFailure());
  const uint64_t id = o.id;
  constexpr uint64_t kD = 40;
  reg_.Join(kD, Uid(4));
  auto b_to_d = ShareTo(kB, id, 4);
  ASSERT_TRUE(b_to_d.ok());
  ASSERT_TRUE(ImportView(kD, *b_to_d, id, CpuAccess::kRead, 703));
  reg_.Leave(kD);  // let go, its fd possibly kept
  reg_.Leave(kB);
  // Its grants can be imported no more.
  EXPECT_EQ(reg_.Import(kC, o.b_to_c.token(), Accept).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Describe(kC, id).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, o.to_b.id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{701, 702, 703}));
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Stats().grants(), 0u);
}

// The same without live revoke (memfd, dmaheap, udmabuf: no views): an
// ended granter's onward grant that someone imported stays, so that the
// owner's revoke still ends the holds given through it. It was dropped
// with the session (helper-115 reproduced it on memfd): C kept the buffer
// after A's revoke, read-write where the chain had it, could share it on
// to anyone, and kept it alive and charged to A.
TEST_F(RegistryTest, RevokeWithoutLiveReachesImportsOfAGranterWhoseSessionEnded) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> to_b = ShareAndImport(kA, id, 2, kB);
  ASSERT_TRUE(to_b.ok()) << to_b.status();
  absl::StatusOr<v1::Grant> b_to_c = ShareAndImport(kB, id, 3, kC);
  ASSERT_TRUE(b_to_c.ok()) << b_to_c.status();
  reg_.Leave(kB);
  EXPECT_EQ(reg_.Import(kC, b_to_c->token(), Accept).status().code(), StatusCode::kNotFound)
      << "its grants can be imported no more";
  ASSERT_TRUE(reg_.Describe(kC, id).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, to_b->id(), false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ShareTo(kC, id, 4).status().code(), StatusCode::kNotFound) << "shared on after";
  EXPECT_EQ(Stats().grants(), 0u);
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(Stats().live_buffers(), 0u) << "C still holds it";
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok()) << reg_.CheckLinksForTesting();
}

// Such a kept grant goes once it reaches no one: its importer let go (no
// hold of theirs left for a revoke to end), or the only importer was the
// ended session itself (helper-116: both stayed until the buffer went,
// counting against the uid's onward grants).
TEST_F(RegistryTest, AKeptGrantWithoutLiveGoesOnceItReachesNoOne) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> to_b = ShareAndImport(kA, id, 2, kB);
  ASSERT_TRUE(to_b.ok()) << to_b.status();
  absl::StatusOr<v1::Grant> b_to_c = ShareAndImport(kB, id, 3, kC);
  ASSERT_TRUE(b_to_c.ok()) << b_to_c.status();
  absl::StatusOr<v1::Grant> b_to_b = ShareAndImport(kB, id, 2, kB);  // its own
  ASSERT_TRUE(b_to_b.ok()) << b_to_b.status();
  reg_.Leave(kB);
  EXPECT_EQ(Stats().grants(), 2u) << "A's, and B's to C (C holds by it)";
  ASSERT_TRUE(reg_.Release(kC, {id}).ok());
  EXPECT_EQ(Stats().grants(), 1u) << "B's to C reaches no one now";
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok()) << reg_.CheckLinksForTesting();
}

// A revoke follows a chain through several ended sessions, whichever ends
// first (helper-118: a kept grant that reached no importer of its own was
// dropped though something was shared on through it, and the owner's
// revoke then missed the end of the chain). Without live revoke: A shares
// to B, B on to C, C on to D; B and C end.
class ChainTest : public RegistryTest {
 protected:
  static constexpr uint64_t kD = 40;
  void EndBothThenRevoke(uint64_t first, uint64_t second) {
    reg_.Join(kC, Uid(3));
    reg_.Join(kD, Uid(4));
    const uint64_t id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> u = ShareAndImport(kA, id, 2, kB);
    ASSERT_TRUE(u.ok()) << u.status();
    absl::StatusOr<v1::Grant> v = ShareAndImport(kB, id, 3, kC);
    ASSERT_TRUE(v.ok()) << v.status();
    absl::StatusOr<v1::Grant> w = ShareAndImport(kC, id, 4, kD);
    ASSERT_TRUE(w.ok()) << w.status();
    reg_.Leave(first);
    reg_.Leave(second);
    EXPECT_TRUE(reg_.CheckLinksForTesting().ok()) << reg_.CheckLinksForTesting();
    ASSERT_TRUE(reg_.Describe(kD, id).ok());
    ASSERT_TRUE(reg_.Revoke(kA, u->id(), false).ok());
    EXPECT_EQ(reg_.Describe(kD, id).status().code(), StatusCode::kNotFound);
    EXPECT_EQ(Stats().grants(), 0u);
    ASSERT_TRUE(reg_.Release(kA, {id}).ok());
    EXPECT_EQ(Stats().live_buffers(), 0u) << "D still holds it";
    EXPECT_TRUE(reg_.CheckLinksForTesting().ok()) << reg_.CheckLinksForTesting();
  }
};

TEST_F(ChainTest, RevokeWithoutLiveReachesTheEndOfAChainWhoseFirstSharerEndedFirst) {
  EndBothThenRevoke(kB, kC);
}

TEST_F(ChainTest, RevokeWithoutLiveReachesTheEndOfAChainWhoseLastSharerEndedFirst) {
  EndBothThenRevoke(kC, kB);
}

// An ended session's onward grants that reach nobody go with it; those
// that do stay (for a revoke) until their buffer goes.
TEST_F(RegistryTest, AnEndedSessionsOnwardGrantsStayOnlyWhileTheyReachSomeone) {
  const Onward o = OnwardToC();
  ASSERT_FALSE(HasFailure());
  const uint64_t id = o.id;
  ASSERT_TRUE(ShareTo(kB, id, 3).ok());  // never imported
  EXPECT_EQ(Stats().grants(), 3u);
  reg_.Leave(kB);
  EXPECT_EQ(Stats().grants(), 2u);  // A's, and B's that C imported
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  reg_.Leave(kC);  // the buffer's last holder
  EXPECT_EQ(Stats().grants(), 0u);
}

// Grants of imported buffers count per uid, across its sessions (they may
// outlive them) and its user namespace's uids (each session here runs as
// another of uid 2's sub-uids): past kMaxOnwardGrantsPerUid that uid shares
// on nothing more, others and its own buffers unaffected, until some go.
TEST_F(RegistryTest, OnwardGrantsAreBoundedPerUid) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_uid2 = ShareTo(kA, id, 2);
  auto to_uid3 = ShareTo(kA, id, 3);
  ASSERT_TRUE(to_uid2.ok() && to_uid3.ok());
  constexpr size_t kPerSession = Registry::kMaxGrantsPerSession;
  const size_t sessions = Registry::kMaxOnwardGrantsPerUid / kPerSession + 1;
  uint64_t view = 1000;
  for (uint64_t s = 0; s < sessions; ++s) {
    const uint64_t sid = 100 + s;
    Identity sub_uid = Uid(2);
    sub_uid.uid = static_cast<uid_t>(100000 + s);
    sub_uid.account_uid = 2;
    reg_.Join(sid, sub_uid);
    ASSERT_TRUE(ImportView(sid, *to_uid2, id, CpuAccess::kRead, view++));
  }
  size_t shared = 0;
  absl::Status refused;
  for (uint64_t s = 0; s < sessions && refused.ok(); ++s) {
    shared += ShareUntilRefused(100 + s, id, 4, kPerSession, &refused);
  }
  EXPECT_EQ(shared, Registry::kMaxOnwardGrantsPerUid);
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "4096")) << refused;
  // Another uid shares on; uid 2 still shares what it owns.
  ASSERT_TRUE(ImportView(kC, *to_uid3, id, CpuAccess::kRead, view++));
  EXPECT_TRUE(ShareTo(kC, id, 4).ok());
  const uint64_t own = AddN(kB, 1)[0];
  EXPECT_TRUE(ShareTo(kB, own, 4).ok());
  // A session of uid 2 ends: its grants reached nobody, so they go.
  reg_.Leave(100);
  EXPECT_TRUE(ShareTo(100 + sessions - 1, id, 4).ok());
}

// All of a uid's grants count together too, its own buffers' included:
// sessions are cheap to open (256 per uid), so kMaxGrantsPerSession alone
// let one uid hold some 262,000 grants of hallocd's memory.
TEST_F(RegistryTest, GrantsAreBoundedPerUidOverAllItsSessions) {
  constexpr size_t kPerSession = Registry::kMaxGrantsPerSession;
  const size_t sessions = Registry::kMaxGrantsPerUid / kPerSession + 1;
  size_t shared = 0;
  absl::Status refused;
  for (uint64_t s = 0; s < sessions && refused.ok(); ++s) {
    const uint64_t sid = 100 + s;
    reg_.Join(sid, Uid(5));
    shared += ShareUntilRefused(sid, AddN(sid, 1)[0], 4, kPerSession, &refused);
  }
  EXPECT_EQ(shared, Registry::kMaxGrantsPerUid);
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "all its sessions together")) << refused;
  // Another uid shares on; once a session of uid 5 ends, its grants go
  // and the uid shares again.
  EXPECT_TRUE(ShareTo(kA, AddN(kA, 1)[0], 4).ok());
  reg_.Leave(100);
  EXPECT_TRUE(ShareTo(100 + sessions - 1, AddN(100 + sessions - 1, 1)[0], 4).ok());
  EXPECT_EQ(Stats().grants(), Registry::kMaxGrantsPerUid - kPerSession + 2);
}

// Each grant a session shares a buffer on with keeps every grant the
// session holds it through (a revoke of any must reach it): those are
// few, or a few sessions importing a thousand grants each and sharing on
// had hallocd keep millions of entries. Past kMaxGrantsPerImport a new
// grant of the same buffer is refused; the ones it holds it through still
// import, and once it lets go it may import anew.
TEST_F(RegistryTest, ASessionHoldsABufferThroughFewGrants) {
  const uint64_t id = AddN(kA, 1)[0];
  std::vector<v1::Grant> grants;
  for (size_t i = 0; i <= Registry::kMaxGrantsPerImport; ++i) {
    absl::StatusOr<v1::Grant> g = ShareTo(kA, id, 2);
    ASSERT_TRUE(g.ok()) << g.status();
    grants.push_back(*g);
  }
  uint64_t view = 100;
  for (size_t i = 0; i < Registry::kMaxGrantsPerImport; ++i) {
    ASSERT_TRUE(ImportView(kB, grants[i], id, CpuAccess::kRead, view++));
  }
  absl::StatusOr<Registry::Imported> past = reg_.Import(kB, grants.back().token(), Accept);
  EXPECT_EQ(past.status().code(), StatusCode::kResourceExhausted) << past.status();
  EXPECT_TRUE(ImportView(kB, grants[0], id, CpuAccess::kRead, view++)) << "one it holds it through";
  absl::StatusOr<v1::Grant> onward = ShareTo(kB, id, 3);
  ASSERT_TRUE(onward.ok()) << onward.status();
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  EXPECT_TRUE(reg_.Import(kB, grants.back().token(), Accept).ok()) << "after letting go";
}

// A kept onward grant stays only while a revoke could reach it: once the
// grant it came through went with its own (ended) session, it goes too,
// and stops counting against its uid's bound.
TEST_F(RegistryTest, KeptOnwardGrantsGoOnceNoRevokeCanReachThem) {
  const Onward o = OnwardToC();
  ASSERT_FALSE(HasFailure());
  const uint64_t id = o.id;
  reg_.Leave(kB);
  EXPECT_EQ(Stats().grants(), 2u) << "A's, and B's kept for a revoke of A's";
  reg_.Leave(kA);  // A's grant goes with A: nothing can revoke B's now
  EXPECT_EQ(Stats().grants(), 0u);
  EXPECT_TRUE(reg_.Describe(kC, id).ok()) << "C still holds what it imported";
}

// A chain of kept onward grants (each link's session ended after sharing on
// to the next, which imported) goes in the one Leave that ends its root,
// however long the chain and in whatever order its grants are stored.
TEST_F(RegistryTest, AChainOfKeptOnwardGrantsGoesWithItsRoot) {
  constexpr uint64_t kLinks = 64;
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> prev = ShareTo(kA, id, 2);
  ASSERT_TRUE(prev.ok()) << prev.status();
  uint64_t view = 5000;
  for (uint64_t i = 0; i < kLinks; ++i) {
    const uint64_t sid = 200 + i;
    reg_.Join(sid, Uid(2));
    ASSERT_TRUE(ImportView(sid, *prev, id, CpuAccess::kRead, view++));
    absl::StatusOr<v1::Grant> next = ShareTo(sid, id, 2);
    ASSERT_TRUE(next.ok()) << next.status();
    if (i > 0) reg_.Leave(sid - 1);  // kept: `sid` imported through it
    prev = next;
  }
  ASSERT_TRUE(ImportView(kB, *prev, id, CpuAccess::kRead, view++));
  reg_.Leave(200 + kLinks - 1);
  EXPECT_EQ(Stats().grants(), kLinks + 1) << "A's and every link's, kept for a revoke of A's";
  reg_.Leave(kA);
  EXPECT_EQ(Stats().grants(), 0u);
  EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "B still holds what it imported";
}

// A grant an ended session kept, left by a revoke with routes only through
// grants gone with their own sessions, can be reached by no revoke any
// more: it goes then (its importers keep what they hold), not at some
// later end, and no longer counts against its uid.
TEST_F(RegistryTest, ARevokeDropsTheKeptGrantsItLeavesUnrevocable) {
  constexpr uint64_t kD = 40, kE = 50;
  reg_.Join(kC, Uid(3));
  reg_.Join(kD, Uid(4));
  reg_.Join(kE, Uid(5));
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> a_to_e = ShareTo(kA, id, 5), a_to_c = ShareTo(kA, id, 3);
  ASSERT_TRUE(a_to_e.ok() && a_to_c.ok());
  ASSERT_TRUE(ImportView(kE, *a_to_e, id, CpuAccess::kRead, 801));
  ASSERT_TRUE(ImportView(kC, *a_to_c, id, CpuAccess::kRead, 802));
  absl::StatusOr<v1::Grant> e_to_b = ShareTo(kE, id, 2), c_to_b = ShareTo(kC, id, 2);
  ASSERT_TRUE(e_to_b.ok() && c_to_b.ok());
  ASSERT_TRUE(ImportView(kB, *e_to_b, id, CpuAccess::kRead, 803));
  ASSERT_TRUE(ImportView(kB, *c_to_b, id, CpuAccess::kRead, 804));
  absl::StatusOr<v1::Grant> b_to_d = ShareTo(kB, id, 4);  // through both
  ASSERT_TRUE(b_to_d.ok());
  ASSERT_TRUE(ImportView(kD, *b_to_d, id, CpuAccess::kRead, 805));
  reg_.Leave(kB);  // B's grant stays: D imported through it
  reg_.Leave(kC);  // so does C's: B let go of a view of it
  reg_.Leave(kA);  // A's go, and with them C's (nothing can revoke it now)
  EXPECT_EQ(Stats().grants(), 2u) << "E's, and B's: a revoke of E's reaches it";
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kE, e_to_b->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->views, (std::vector<uint64_t>{803}));
  EXPECT_EQ(Stats().grants(), 0u) << "B's is left with C's route, gone with C";
  EXPECT_TRUE(reg_.Describe(kD, id).ok()) << "D keeps what C's route justifies";
}

// A session cut off by a revoke loses every grant it made of the buffer,
// also one made through an earlier hold of it (let go since, so that the
// grant's routes name other grants than the one revoked).
TEST_F(RegistryTest, LiveRevokeReachesGrantsMadeThroughAnEarlierHold) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> first = ShareTo(kA, id, 2), second = ShareTo(kA, id, 2);
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(ImportView(kB, *first, id, CpuAccess::kRead, 901));
  absl::StatusOr<v1::Grant> b_to_c = ShareTo(kB, id, 3);
  ASSERT_TRUE(b_to_c.ok());
  ASSERT_TRUE(ImportView(kC, *b_to_c, id, CpuAccess::kRead, 902));
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  ASSERT_TRUE(ImportView(kB, *second, id, CpuAccess::kRead, 903));
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, second->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{902, 903}));
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Stats().grants(), 1u) << "A's first grant stays";
}

// A view noted after its session's hold went and came back (a Release and
// another import raced the delivery) is still the grant's to cut.
TEST_F(RegistryTest, LiveRevokeCutsAViewNotedAfterItsHoldWasRenewed) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> first = ShareTo(kA, id, 2), second = ShareTo(kA, id, 2);
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(reg_.Import(kB, first->token(), Accept).ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  ASSERT_TRUE(ImportView(kB, *second, id, CpuAccess::kRead, 911));
  ASSERT_TRUE(reg_.AddImportView(kB, first->id(), id, CpuAccess::kRead, 912).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, first->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->views, (std::vector<uint64_t>{912}));
  EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "B still holds through the second grant";
}

// A revoke that cuts off the buffer's last holder still reaches the views
// of everyone down the chain who let go (their fds may live on): the holds
// go once the whole chain is walked (a review found the walk stopped when
// the buffer went, and which views it missed depended on hash order).
TEST_F(RegistryTest, LiveRevokeThatFreesTheBufferStillCutsTheViewsDownTheChain) {
  constexpr uint64_t kD = 40, kE = 50;
  reg_.Join(kD, Uid(4));
  reg_.Join(kE, Uid(5));
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> a_to_b = ShareTo(kA, id, 2);
  ASSERT_TRUE(a_to_b.ok());
  ASSERT_TRUE(ImportView(kB, *a_to_b, id, CpuAccess::kRead, 1001));
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  absl::StatusOr<v1::Grant> b_to_d = ShareTo(kB, id, 4);
  ASSERT_TRUE(b_to_d.ok());
  ASSERT_TRUE(ImportView(kD, *b_to_d, id, CpuAccess::kRead, 1002));
  absl::StatusOr<v1::Grant> d_to_e = ShareTo(kD, id, 5);
  ASSERT_TRUE(d_to_e.ok());
  ASSERT_TRUE(ImportView(kE, *d_to_e, id, CpuAccess::kRead, 1003));
  ASSERT_TRUE(reg_.Release(kE, {id}).ok());
  ASSERT_TRUE(reg_.Release(kD, {id}).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, a_to_b->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{1001, 1002, 1003}));
  EXPECT_EQ(Stats().live_buffers(), 0u);
  EXPECT_EQ(Stats().grants(), 0u);
  EXPECT_EQ(Stats().grants_revoked_total(), 3u) << "the one revoked and the two down the chain";
}

// A session whose late view of a grant was dropped (its send failed) after
// its hold went and came back through another grant is no longer linked
// to the first: reconnecting clients left one link each behind, for as
// long as the grant lived (a review's finding).
TEST_F(RegistryTest, ADroppedLateViewLeavesNoLinkToItsGrant) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> first = ShareTo(kA, id, 2), second = ShareTo(kA, id, 2);
  ASSERT_TRUE(first.ok() && second.ok());
  uint64_t view = 1100;
  for (uint64_t s = 1000; s < 1010; ++s) {
    SCOPED_TRACE(s);
    reg_.Join(s, Uid(2));
    absl::StatusOr<Registry::Imported> early = reg_.Import(s, first->token(), Accept);
    ASSERT_TRUE(early.ok()) << early.status();
    ASSERT_TRUE(reg_.Release(s, {id}).ok());  // while that import is on its way
    absl::StatusOr<Registry::Imported> late = reg_.Import(s, second->token(), Accept);
    ASSERT_TRUE(late.ok()) << late.status();
    ASSERT_TRUE(reg_.AddImportView(s, second->id(), id, CpuAccess::kRead, view++).ok());
    reg_.SettleImport(s, id, late->generation, true);
    ASSERT_TRUE(reg_.AddImportView(s, first->id(), id, CpuAccess::kRead, view).ok());
    reg_.DropImportView(s, first->id(), id, view++);  // its send failed
    reg_.SettleImport(s, id, early->generation, false);
    reg_.Leave(s);
  }
  EXPECT_EQ(reg_.ImporterLinksForTesting(first->id()), 0u);
  EXPECT_EQ(reg_.ImporterLinksForTesting(second->id()), 0u);
}

// An importer that let go (Release, or its session ended) may still have
// the fd somewhere: revoking the grant cuts those views off too.
TEST_F(RegistryTest, LiveRevokeCutsTheViewsOfImportersThatLetGo) {
  reg_.Join(kC, Uid(2));
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  for (auto [sid, view] : {std::pair{kB, uint64_t{801}}, std::pair{kC, uint64_t{802}}}) {
    ASSERT_TRUE(ImportView(sid, *grant, id, CpuAccess::kRead, view));
  }
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  reg_.Leave(kC);
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, grant->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> views = r->views;
  std::sort(views.begin(), views.end());
  EXPECT_EQ(views, (std::vector<uint64_t>{801, 802}));
  EXPECT_TRUE(reg_.Describe(kA, id).ok());
}

// A grant shared on from imports dies once every grant it came through is
// revoked, one revoke at a time as well as in one; a grant revoked before
// a later share is not counted among where that share came from.
TEST_F(RegistryTest, LiveRevokeReachesGrantsWhoseRoutesWereRevokedOneByOne) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto g1 = ShareTo(kA, id, 2);
  auto g2 = ShareTo(kA, id, 2);
  auto g3 = ShareTo(kA, id, 2);
  ASSERT_TRUE(g1.ok() && g2.ok() && g3.ok());
  uint64_t view = 900;
  for (const auto* g : {&*g1, &*g2, &*g3}) {
    ASSERT_TRUE(ImportView(kB, *g, id, CpuAccess::kRead, ++view));
  }
  // B shares on to C (through g1, g2 and g3), who imports.
  auto to_c = ShareTo(kB, id, 3);
  ASSERT_TRUE(to_c.ok());
  ASSERT_TRUE(ImportView(kC, *to_c, id, CpuAccess::kRead, 909));
  // g3 goes; then B shares again (through g1 and g2 only).
  ASSERT_TRUE(reg_.Revoke(kA, g3->id(), true).ok());
  auto later = ShareTo(kB, id, 3);
  ASSERT_TRUE(later.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  // g1 goes: both of B's grants still have g2.
  ASSERT_TRUE(reg_.Revoke(kA, g1->id(), true).ok());
  EXPECT_TRUE(reg_.Describe(kC, id).ok());
  // g2 goes: nothing of what B shared is left.
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, g2->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(std::find(r->views.begin(), r->views.end(), 909), r->views.end());
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Import(kC, to_c->token(), Accept).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Import(kC, later->token(), Accept).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(reg_.Describe(kA, id).ok());
}

// A grant shared on read-write through a read-write route does not outlive
// that route's revoke by resting on a read route: it would hand the
// revoked write access out again.
TEST_F(RegistryTest, LiveRevokeReachesGrantsWiderThanTheRoutesLeft) {
  const TwoRoutes t = TwoRoutesToB(CpuAccess::kRead, 951);
  const uint64_t id = t.id;
  // B shares on: read-write to C, and read to C.
  GrantView rw_to_c = ReadGrantForUid(3);
  rw_to_c.access = CpuAccess::kReadWrite;
  auto wide = reg_.Share(kB, id, [&](CpuAccess held) {
    EXPECT_EQ(held, CpuAccess::kReadWrite);
    return rw_to_c;
  });
  auto narrow = ShareTo(kB, id, 3);
  ASSERT_TRUE(wide.ok() && narrow.ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, t.rw.id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<v1::BufferInfo> b = reg_.Describe(kB, id);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_EQ(reg_.Import(kC, wide->token(), Accept).status().code(), StatusCode::kNotFound)
      << "the revoked write access came back through B's read-write grant";
  absl::StatusOr<Registry::Imported> c = reg_.Import(kC, narrow->token(), Accept);
  ASSERT_TRUE(c.ok()) << c.status() << ": the read grant rests on B's read route";
  EXPECT_EQ(c->info.cpu_access(), v1::CPU_ACCESS_READ);
}

// A route delivered at CPU-none (the importer's rule allows no CPU access)
// covers no CPU access of the grants shared on through it, even when its
// grant gives more: it is taken as delivered, not at its grant's rights.
TEST_F(RegistryTest, ACpuNoneRouteCoversNoReadGrantAfterARevoke) {
  const TwoRoutes t = TwoRoutesToB(CpuAccess::kNone, 961);  // read judged down to none
  const uint64_t id = t.id;
  auto on = ShareTo(kB, id, 3);
  ASSERT_TRUE(on.ok());
  ASSERT_TRUE(reg_.Revoke(kA, t.rw.id(), true).ok());
  absl::StatusOr<v1::BufferInfo> b = reg_.Describe(kB, id);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->cpu_access(), v1::CPU_ACCESS_NONE);
  EXPECT_EQ(reg_.Import(kC, on->token(), Accept).status().code(), StatusCode::kNotFound)
      << "B, left with CPU-none, still passed on read access";
}

// A revoke landing while an import is under way (the route not noted yet):
// the importer holds nothing it may share on, and each grant's imports
// let go of are bounded (their view ids are kept for its revoke).
TEST_F(RegistryTest, WhatARevokeLeftCannotBeSharedOnAndLetGoImportsAreBounded) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(reg_.Import(kB, grant->token(), Accept).ok());  // not delivered yet
  ASSERT_TRUE(reg_.Revoke(kA, grant->id(), true).ok());
  EXPECT_EQ(ShareTo(kB, id, 2).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(reg_.AddImportView(kB, grant->id(), id, CpuAccess::kRead, 1).code(),
            StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());

  auto kept = ShareTo(kA, id, 2);
  ASSERT_TRUE(kept.ok());
  for (uint64_t view = 1; view <= Registry::kMaxImportsPerGrant; ++view) {
    ASSERT_TRUE(reg_.Import(kB, kept->token(), Accept).ok()) << view;
    ASSERT_TRUE(reg_.AddImportView(kB, kept->id(), id, CpuAccess::kRead, view).ok());
    ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  }
  EXPECT_EQ(reg_.Import(kB, kept->token(), Accept).status().code(),
            StatusCode::kResourceExhausted);
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, kept->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->views.size(), Registry::kMaxImportsPerGrant) << "every one let go is cut off";
}

// All sessions' live imports of one grant are bounded too: its revoke cuts
// each view off (an ioctl and a zap of its mappings) on a lane every uid
// shares. One uid's sessions multiplied the per-session bound.
TEST_F(RegistryTest, AGrantsLiveImportsAreBoundedAcrossSessions) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  constexpr size_t kSessions = Registry::kMaxViewsPerGrant / Registry::kMaxImportsPerGrant;
  uint64_t view = 1;
  for (uint64_t s = 0; s < kSessions; ++s) {
    const uint64_t sid = 1000 + s;
    reg_.Join(sid, Uid(2));
    for (size_t i = 0; i < Registry::kMaxImportsPerGrant; ++i) {
      ASSERT_TRUE(ImportView(sid, *grant, id, CpuAccess::kRead, view++));
    }
  }
  reg_.Join(2000, Uid(2));
  absl::Status over = reg_.Import(2000, grant->token(), Accept).status();
  EXPECT_EQ(over.code(), StatusCode::kResourceExhausted) << over;
  EXPECT_TRUE(absl::StrContains(over.message(), "imports live")) << over;
  // Another grant of the buffer is another grant's revoke.
  absl::StatusOr<v1::Grant> other = ShareTo(kA, id, 2);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(ImportView(2000, *other, id, CpuAccess::kRead, view++));
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, grant->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->views.size(), Registry::kMaxViewsPerGrant);
}

// Share and Import cost a client nothing, and each leaves state in
// hallocd: both are bounded per session, with a reason, and the refusal
// changes nothing.
TEST_F(RegistryTest, GrantsAndRepeatedImportsAreBoundedPerSession) {
  const uint64_t id = AddN(kA, 1)[0];
  std::vector<uint64_t> grants;
  for (size_t i = 0; i < Registry::kMaxGrantsPerSession; ++i) {
    auto g = ShareTo(kA, id, 2);
    ASSERT_TRUE(g.ok()) << i << ": " << g.status();
    grants.push_back(g->id());
  }
  auto over = ShareTo(kA, id, 2);
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Stats().grants(), Registry::kMaxGrantsPerSession);
  ASSERT_TRUE(reg_.Revoke(kA, grants.back(), false).ok());
  EXPECT_TRUE(ShareTo(kA, id, 2).ok());

  auto token = ShareTo(kB, AddN(kB, 1)[0], 1);
  ASSERT_TRUE(token.ok());
  for (size_t i = 0; i < Registry::kMaxImportsPerGrant; ++i) {
    auto imported = reg_.Import(kA, token->token(), Accept);
    ASSERT_TRUE(imported.ok()) << i << ": " << imported.status();
    ASSERT_TRUE(reg_.AddImportView(kA, token->id(), imported->buffer->id, CpuAccess::kRead,
                                   1000 + i).ok());
  }
  EXPECT_EQ(reg_.Import(kA, token->token(), Accept).status().code(),
            StatusCode::kResourceExhausted);
}

// On a backend with live revoke, an import whose view never reached the
// client leaves neither its route nor its wider rights behind.
TEST_F(RegistryTest, AnUndeliveredLiveImportLeavesNoRouteAndNoWiderRights) {
  const uint64_t id = AddN(kA, 1)[0];
  auto read = ShareTo(kA, id, 2);
  auto read_write = ShareTo(kA, id, 2, CpuAccess::kReadWrite);
  ASSERT_TRUE(read.ok() && read_write.ok());
  ASSERT_TRUE(ImportView(kB, *read, id, CpuAccess::kRead, 801));
  auto wider = reg_.Import(kB, read_write->token(), Accept);
  ASSERT_TRUE(wider.ok());
  ASSERT_EQ(wider->widened_from, CpuAccess::kRead);
  ASSERT_TRUE(reg_.AddImportView(kB, read_write->id(), id, CpuAccess::kReadWrite, 802).ok());
  // The send failed: as the allocator undoes it.
  reg_.DropImportView(kB, read_write->id(), id, 802);
  reg_.UndoWidening(kB, id, CpuAccess::kReadWrite, *wider->widened_from);
  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kB, id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ);
  // Revoking the read-write grant finds no view of it to cut.
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, read_write->id(), true);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->views.empty());
}

// A Share between an import and the noting of its view (another call of
// the same session, racing) still knows where its granter's hold came
// from: the revoke reaches it.
TEST_F(RegistryTest, AShareRacingAnImportIsDerivedFromIt) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = ShareTo(kA, id, 2);
  ASSERT_TRUE(to_b.ok());
  ASSERT_TRUE(reg_.Import(kB, to_b->token(), Accept).ok());  // no view noted yet
  auto b_to_c = ShareTo(kB, id, 3);
  ASSERT_TRUE(b_to_c.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());  // its import failed, say
  ASSERT_TRUE(reg_.Revoke(kA, to_b->id(), true).ok());
  EXPECT_EQ(reg_.Import(kC, b_to_c->token(), Accept).status().code(), StatusCode::kNotFound);
}

// Without live revoke the importers' fds stay valid, but hallocd's holds
// go: an importer kept the buffer held (and its owner charged) for as long
// as its session lived, even with every fd closed, and could share it on
// to a third session after the revoke.
TEST_F(RegistryTest, RevokeWithoutLiveEndsTheHoldsItGaveAndWhatWasSharedOn) {
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = ShareTo(kA, id, 2);
  auto to_c = ShareTo(kA, id, 3, CpuAccess::kReadWrite);
  auto also_to_c = ShareTo(kA, id, 3);
  ASSERT_TRUE(to_b.ok() && to_c.ok() && also_to_c.ok());
  ASSERT_TRUE(reg_.Import(kB, to_b->token(), Accept).ok());
  ASSERT_TRUE(reg_.Import(kC, to_c->token(), Accept).ok());
  ASSERT_TRUE(reg_.Import(kC, also_to_c->token(), Accept).ok());
  auto b_to_c = ShareTo(kB, id, 3);  // shared on before the revoke
  ASSERT_TRUE(b_to_c.ok());

  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, to_b->id(), false);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->views.empty());
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ShareTo(kB, id, 3).status().code(), StatusCode::kNotFound) << "shared on after";
  EXPECT_EQ(reg_.Import(kC, b_to_c->token(), Accept).status().code(), StatusCode::kNotFound)
      << "what it shared on before";

  // C holds it through two grants: revoking the read-write one leaves it
  // the read one's rights.
  ASSERT_TRUE(reg_.Revoke(kA, to_c->id(), false).ok());
  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kC, id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ);

  // Once the owner lets go and the last grant is revoked, nobody holds it:
  // the buffer is gone from hallocd (its charge with it, or followed as
  // released memory under a quota).
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(Stats().live_buffers(), 1u) << "C still holds it";
  ASSERT_TRUE(reg_.Revoke(kA, also_to_c->id(), false).ok());
  EXPECT_EQ(reg_.Describe(kC, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Stats().live_buffers(), 0u);
}

// A buffer a revoke took from a session counts as released already: a
// Release that names it among others releases those (it used to be refused
// whole, and a client that released its buffers in one batch kept them all
// until its end), once; Describe says why it is not held. A session
// remembers as many such buffers as it may hold.
TEST_F(RegistryTest, AReleaseNamingABufferARevokeTookReleasesTheOthers) {
  const uint64_t shared = AddN(kA, 1)[0];
  const uint64_t own = AddN(kB, 1)[0];
  absl::StatusOr<v1::Grant> g = ShareTo(kA, shared, 2);
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(reg_.Import(kB, g->token(), Accept).ok());
  ASSERT_TRUE(reg_.Revoke(kA, g->id(), false).ok());
  absl::Status d = reg_.Describe(kB, shared).status();
  EXPECT_EQ(d.code(), StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(d.message(), "revoked")) << d;
  EXPECT_EQ(Stats().live_buffers(), 2u);
  EXPECT_TRUE(reg_.Release(kB, {shared, own}).ok());
  EXPECT_EQ(Stats().live_buffers(), 1u) << "B's own went";
  EXPECT_EQ(reg_.Release(kB, {shared}).code(), StatusCode::kNotFound) << "released once";
  EXPECT_TRUE(reg_.Describe(kA, shared).ok()) << "the owner's hold is its own";

  // Bounded: of five buffers taken, the newest four are remembered.
  ASSERT_TRUE(reg_.Release(kA, {shared}).ok());
  std::vector<uint64_t> taken;
  for (int i = 0; i < 5; ++i) {
    const uint64_t id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> gi = ShareTo(kA, id, 2);
    ASSERT_TRUE(gi.ok());
    ASSERT_TRUE(reg_.Import(kB, gi->token(), Accept).ok());
    ASSERT_TRUE(reg_.Revoke(kA, gi->id(), false).ok());
    ASSERT_TRUE(reg_.Release(kA, {id}).ok());
    taken.push_back(id);
  }
  EXPECT_EQ(reg_.Release(kB, {taken[0]}).code(), StatusCode::kNotFound) << "forgotten";
  EXPECT_TRUE(reg_.Release(kB, {taken[1], taken[2], taken[3], taken[4]}).ok());
}

// A session that may hold many buffers still remembers no more than
// kMostRevokedRemembered taken: importers that never release cost hallocd
// a bounded amount (a review: 12 MB a session, charged to nobody).
class RevokedRememberedTest : public RegistryTest {
 protected:
  RevokedRememberedTest() : RegistryTest(/*max_buffers_per_session=*/uint64_t{1} << 18) {}
};

TEST_F(RevokedRememberedTest, ASessionRemembersABoundedNumberOfBuffersRevokesTook) {
  constexpr size_t kMost = Registry::kMostRevokedRemembered;
  std::vector<uint64_t> taken;
  for (size_t i = 0; i < kMost + 2; ++i) {
    const uint64_t id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> g = ShareTo(kA, id, 2);
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE(reg_.Import(kB, g->token(), Accept).ok());
    ASSERT_TRUE(reg_.Revoke(kA, g->id(), false).ok());
    ASSERT_TRUE(reg_.Release(kA, {id}).ok());
    taken.push_back(id);
  }
  EXPECT_EQ(reg_.Release(kB, {taken[0]}).code(), StatusCode::kNotFound) << "forgotten";
  EXPECT_EQ(reg_.Release(kB, {taken[1]}).code(), StatusCode::kNotFound) << "forgotten";
  EXPECT_TRUE(reg_.Release(kB, {taken[2], taken[kMost / 2], taken.back()}).ok());
}

// What is remembered is the last taken, not the newest buffers: an older
// buffer a revoke takes once four newer ones were taken is the one kept (a
// review found it forgotten at once, its batch Release refused whole).
TEST_F(RegistryTest, TheBufferARevokeTookLastIsRemembered) {
  const uint64_t old = AddN(kA, 1)[0];
  auto take_from_b = [&](uint64_t id) {
    absl::StatusOr<v1::Grant> g = ShareTo(kA, id, 2);
    ASSERT_TRUE(g.ok());
    ASSERT_TRUE(reg_.Import(kB, g->token(), Accept).ok());
    ASSERT_TRUE(reg_.Revoke(kA, g->id(), false).ok());
  };
  std::vector<uint64_t> newer;
  for (int i = 0; i < 4; ++i) {
    const uint64_t id = AddN(kA, 1)[0];
    take_from_b(id);
    ASSERT_TRUE(reg_.Release(kA, {id}).ok());  // B keeps its fd, releases nothing
    newer.push_back(id);
  }
  take_from_b(old);
  const uint64_t own = AddN(kB, 1)[0];
  EXPECT_TRUE(reg_.Release(kB, {old, own}).ok());
  EXPECT_EQ(reg_.Release(kB, {newer[0]}).code(), StatusCode::kNotFound) << "the first taken";
  EXPECT_TRUE(reg_.Release(kB, {newer[1], newer[2], newer[3]}).ok());
}

// The rights left after a revoke without live revoke are what the other
// imports were judged to give, not what their grants give: an importer
// whose rule caps it at read, holding through two read-write grants, was
// widened to read-write when one was revoked (a review's finding), and
// could then set the owner's metadata and share on read-write.
TEST_F(RegistryTest, RevokeWithoutLiveLeavesTheRightsTheOtherImportsWereJudgedToGive) {
  const uint64_t id = AddN(kA, 1)[0];
  auto first = ShareTo(kA, id, 2, CpuAccess::kReadWrite);
  auto second = ShareTo(kA, id, 2, CpuAccess::kReadWrite);
  ASSERT_TRUE(first.ok() && second.ok());
  const auto read_only = [](const GrantView&) -> absl::StatusOr<CpuAccess> {
    return CpuAccess::kRead;  // B's rule: read at most
  };
  ASSERT_TRUE(reg_.Import(kB, first->token(), read_only).ok());
  ASSERT_TRUE(reg_.Import(kB, second->token(), read_only).ok());
  ASSERT_TRUE(reg_.Revoke(kA, first->id(), false).ok());
  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kB, id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ);
}

}  // namespace
}  // namespace halloc
