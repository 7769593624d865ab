#include "service/registry.h"

#include <algorithm>
#include <sys/mman.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

constexpr uint64_t kPage = 4096;

Identity Uid(uid_t uid) {
  Identity id;
  id.uid = uid;
  id.pid = 100 + uid;
  id.exe = "/bin/test";
  return id;
}

std::shared_ptr<BufferRecord> Fresh(const std::string& key = "app/1",
                                    uint64_t size = kPage) {
  auto b = std::make_shared<BufferRecord>();
  b->name = "t";
  b->size = size;
  b->owner_uid = 1;
  b->owner_client = "app";
  b->charged_to = key;
  b->fd = UniqueFd(::memfd_create("registry_test", MFD_CLOEXEC));
  return b;
}

absl::Status NoQuota(uint64_t, uint64_t) { return absl::OkStatus(); }

class RegistryTest : public ::testing::Test {
 protected:
  RegistryTest() : reg_("memfd", /*dma_bufs=*/false, /*max_buffers_per_session=*/4) {
    reg_.Join(kA, Uid(1));
    reg_.Join(kB, Uid(2));
  }

  // Adds `n` one-page buffers held by `session`; returns their ids.
  std::vector<uint64_t> AddN(uint64_t session, int n,
                             CpuAccess access = CpuAccess::kReadWrite) {
    std::vector<std::shared_ptr<BufferRecord>> fresh;
    for (int i = 0; i < n; ++i) fresh.push_back(Fresh());
    v1::AllocateResponse reply;
    absl::Status s = reg_.Add(session, fresh, access, NoQuota, &reply);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<uint64_t> ids;
    for (const auto& b : reply.buffers()) ids.push_back(b.id());
    return ids;
  }

  v1::StatsResponse Stats() {
    v1::StatsResponse s;
    reg_.FillStats(&s);
    return s;
  }

  GrantView ReadGrantForUid(uid_t uid) {
    GrantView g;
    g.peer_uid = uid;
    g.from_client = "app";
    g.from_uid = 1;
    g.access = CpuAccess::kRead;
    return g;
  }

  // `from` shares buffer `id` with `uid`, with CPU `access`.
  absl::StatusOr<v1::Grant> ShareTo(uint64_t from, uint64_t id, uid_t uid,
                                    CpuAccess access = CpuAccess::kRead) {
    GrantView g = ReadGrantForUid(uid);
    g.access = access;
    return reg_.Share(from, id, [&](CpuAccess) { return g; });
  }

  // A's new buffer reaches B by two grants, a read one (imported at
  // `through_read`, views `view`) and a read-write one (view `view` + 1);
  // C (session kC, uid 3) joins.
  static constexpr uint64_t kC = 30;
  struct TwoRoutes {
    uint64_t id = 0;
    v1::Grant read, rw;
  };
  TwoRoutes TwoRoutesToB(CpuAccess through_read, uint64_t view) {
    reg_.Join(kC, Uid(3));
    TwoRoutes t;
    t.id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> read = ShareTo(kA, t.id, 2);
    absl::StatusOr<v1::Grant> rw = ShareTo(kA, t.id, 2, CpuAccess::kReadWrite);
    EXPECT_TRUE(read.ok() && rw.ok());
    if (!read.ok() || !rw.ok()) return t;
    t.read = *read;
    t.rw = *rw;
    EXPECT_TRUE(ImportView(kB, t.read, t.id, through_read, view));
    EXPECT_TRUE(ImportView(kB, t.rw, t.id, CpuAccess::kReadWrite, view + 1));
    return t;
  }

  // What a receiver accepts: the grant's terms as they are.
  static absl::StatusOr<CpuAccess> Accept(const GrantView& g) { return g.access; }
  // `session` imports `grant` and its view `view_id` (of `access`) is
  // noted, as the allocator does once it delivered it.
  ::testing::AssertionResult ImportView(uint64_t session, const v1::Grant& grant,
                                        uint64_t buffer_id, CpuAccess access,
                                        uint64_t view_id) {
    if (absl::StatusOr<Registry::Imported> i = reg_.Import(session, grant.token(), Accept);
        !i.ok()) {
      return ::testing::AssertionFailure() << "Import: " << i.status();
    }
    if (absl::Status s = reg_.AddImportView(session, grant.id(), buffer_id, access, view_id);
        !s.ok()) {
      return ::testing::AssertionFailure() << "AddImportView: " << s;
    }
    return ::testing::AssertionSuccess();
  }

  static constexpr uint64_t kA = 10, kB = 20;
  Registry reg_;
};

TEST_F(RegistryTest, AddAssignsIdsChargesAndReportsTheOwnersRights) {
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh(), Fresh()};
  v1::AllocateResponse reply;
  ASSERT_TRUE(reg_.Add(kA, fresh, CpuAccess::kRead, NoQuota, &reply).ok());
  ASSERT_EQ(reply.buffers_size(), 2);
  EXPECT_NE(reply.buffers(0).id(), reply.buffers(1).id());
  EXPECT_EQ(reply.buffers(0).id(), fresh[0]->id);
  EXPECT_TRUE(reply.buffers(0).owned());
  EXPECT_EQ(reply.buffers(0).cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_EQ(reply.buffers(0).backend(), "memfd");
  EXPECT_EQ(Stats().live_buffers(), 2u);
  EXPECT_EQ(Stats().live_bytes(), 2 * kPage);
  v1::DumpResponse dump;
  reg_.FillDump(&dump);
  ASSERT_EQ(dump.clients_size(), 1);
  EXPECT_EQ(dump.clients(0).client(), "app");
  EXPECT_EQ(dump.clients(0).uid(), 1u);
  EXPECT_EQ(dump.clients(0).buffers(), 2u);
  EXPECT_EQ(dump.clients(0).bytes(), 2 * kPage);
  // Per-client stats: what it owns now and what it ever allocated.
  ASSERT_TRUE(reg_.Release(kA, {fresh[0]->id}).ok());
  v1::StatsResponse stats = Stats();
  ASSERT_EQ(stats.clients_size(), 1);
  EXPECT_EQ(stats.clients(0).client(), "app");
  EXPECT_EQ(stats.clients(0).uid(), 1u);
  EXPECT_EQ(stats.clients(0).buffers(), 1u);
  EXPECT_EQ(stats.clients(0).bytes(), kPage);
  EXPECT_EQ(stats.clients(0).allocations_total(), 2u);
  // Owning nothing, it has no row (uids that come and go leave none);
  // owning again, it counts from there.
  ASSERT_TRUE(reg_.Release(kA, {fresh[1]->id}).ok());
  EXPECT_EQ(Stats().clients_size(), 0);
  AddN(kA, 1);
  stats = Stats();
  ASSERT_EQ(stats.clients_size(), 1);
  EXPECT_EQ(stats.clients(0).allocations_total(), 1u);
}

TEST_F(RegistryTest, QuotaJudgeSeesTheCurrentChargeAndItsRefusalAddsNothing) {
  AddN(kA, 1);
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  auto quota = [&](uint64_t buffers, uint64_t bytes) {
    seen.emplace_back(buffers, bytes);
    return absl::ResourceExhaustedError("over quota");
  };
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh()};
  v1::AllocateResponse reply;
  EXPECT_EQ(reg_.Add(kA, fresh, CpuAccess::kReadWrite, quota, &reply).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "app/1", quota).code(),
            StatusCode::kResourceExhausted);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], std::make_pair(uint64_t{1}, kPage));
  EXPECT_EQ(reply.buffers_size(), 0);
  EXPECT_EQ(Stats().live_buffers(), 1u);
  // Another key starts from nothing.
  seen.clear();
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "other/1", quota).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(seen[0], std::make_pair(uint64_t{0}, uint64_t{0}));
}

// Calls racing each other: what one has been let make counts against the
// quota of the next until it is added (then as charged, not twice) or
// given back. Without it each would commit a quota's worth of memory
// before the first Add refused the rest.
TEST_F(RegistryTest, ReservationsCountAgainstTheQuotaUntilAddedOrGivenBack) {
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  // Two pages per key.
  auto quota = [&](uint64_t buffers, uint64_t bytes) {
    seen.emplace_back(buffers, bytes);
    return bytes + kPage > 2 * kPage ? absl::ResourceExhaustedError("over quota")
                                     : absl::OkStatus();
  };
  Registry::Reservation first, second, third;
  ASSERT_TRUE(reg_.CheckRoom(kA, 1, "app/1", quota, true, &first, kPage).ok());
  ASSERT_TRUE(reg_.CheckRoom(kB, 1, "app/1", quota, true, &second, kPage).ok());
  EXPECT_EQ(seen.back(), std::make_pair(uint64_t{1}, kPage)) << "the first's share";
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "app/1", quota, true, &third, kPage).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(third.count(), 0u) << "a refusal sets nothing aside";
  // A check alone sets nothing aside; another key has its own quota.
  EXPECT_TRUE(reg_.CheckRoom(kA, 1, "other/1", quota).ok());
  EXPECT_TRUE(reg_.CheckRoom(kA, 1, "other/1", quota).ok());
  // Added: charged instead of set aside (judged once, not twice).
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh()};
  ASSERT_TRUE(reg_.Add(kA, fresh, CpuAccess::kReadWrite, quota, nullptr, std::move(first)).ok());
  EXPECT_EQ(seen.back(), std::make_pair(uint64_t{1}, kPage)) << "the second's share";
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "app/1", quota).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(seen.back(), std::make_pair(uint64_t{2}, 2 * kPage));
  // Given back (its call failed): room again.
  second = Registry::Reservation();
  EXPECT_TRUE(reg_.CheckRoom(kA, 1, "app/1", quota).ok());
  EXPECT_EQ(seen.back(), std::make_pair(uint64_t{1}, kPage));
}

TEST_F(RegistryTest, PerSessionLimitIsResourceExhausted) {
  AddN(kA, 3);
  EXPECT_EQ(reg_.CheckRoom(kA, 2, "app/1", NoQuota).code(),
            StatusCode::kResourceExhausted);
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh(), Fresh()};
  EXPECT_EQ(reg_.Add(kA, fresh, CpuAccess::kReadWrite, NoQuota, nullptr).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(Stats().live_buffers(), 3u);
  // The other session has its own room.
  EXPECT_TRUE(reg_.CheckRoom(kB, 4, "app/2", NoQuota).ok());
}

TEST_F(RegistryTest, ReleaseIsAllOrNothingAndGivesTheChargeBack) {
  std::vector<uint64_t> ids = AddN(kA, 2);
  EXPECT_EQ(reg_.Release(kA, {ids[0], 999}).code(), StatusCode::kNotFound);
  EXPECT_EQ(Stats().live_buffers(), 2u);
  // Another session cannot release what it does not hold.
  EXPECT_EQ(reg_.Release(kB, {ids[0]}).code(), StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Release(kA, {ids[0], ids[1]}).ok());
  EXPECT_EQ(Stats().live_buffers(), 0u);
  EXPECT_EQ(Stats().releases_total(), 2u);
  v1::DumpResponse dump;
  reg_.FillDump(&dump);
  EXPECT_EQ(dump.clients_size(), 0);  // nothing charged any more
  EXPECT_EQ(reg_.Release(kA, {ids[0]}).code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, ALeftSessionCannotAddAndItsHoldsAndGrantsGo) {
  std::vector<uint64_t> ids = AddN(kA, 2);
  ASSERT_TRUE(reg_.Share(kA, ids[0], [&](CpuAccess) { return ReadGrantForUid(2); }).ok());
  reg_.Leave(kA);
  reg_.Leave(kA);  // twice: no-op
  EXPECT_EQ(Stats().live_buffers(), 0u);
  EXPECT_EQ(Stats().grants(), 0u);
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh()};
  EXPECT_EQ(reg_.Add(kA, fresh, CpuAccess::kReadWrite, NoQuota, nullptr).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "app/1", NoQuota).code(),
            StatusCode::kUnauthenticated);
  // Every call of a left session says so alike (a call racing the close).
  EXPECT_EQ(reg_.Describe(kA, ids[0]).status().code(), StatusCode::kUnauthenticated);
  v1::SetMetadataRequest set;
  set.set_buffer_id(ids[0]);
  EXPECT_EQ(reg_.SetMetadata(kA, set).status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(reg_.Revoke(kA, 1, true).status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(reg_.Release(kA, {ids[0]}).code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Stats().live_buffers(), 0u);
}

TEST_F(RegistryTest, ShareThenImportMakesASecondHolderWithTheJudgedRights) {
  const uint64_t id = AddN(kA, 1)[0];
  CpuAccess sharer_rights = CpuAccess::kNone;
  absl::StatusOr<v1::Grant> grant = reg_.Share(kA, id, [&](CpuAccess held) {
    sharer_rights = held;
    return ReadGrantForUid(2);
  });
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_EQ(sharer_rights, CpuAccess::kReadWrite);
  EXPECT_EQ(grant->buffer_id(), id);
  EXPECT_EQ(grant->peer().uid(), 2u);
  EXPECT_EQ(grant->token().size(), 32u);
  EXPECT_EQ(Stats().grants(), 1u);

  GrantView judged;
  absl::StatusOr<Registry::Imported> imported =
      reg_.Import(kB, grant->token(), [&](const GrantView& g) {
        judged = g;
        return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
      });
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(judged.id, grant->id());
  EXPECT_EQ(judged.buffer_id, id);
  EXPECT_EQ(judged.from_uid, 1u);
  EXPECT_TRUE(imported->newly_held);
  EXPECT_EQ(imported->info.cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_FALSE(imported->info.owned());
  EXPECT_EQ(imported->buffer->id, id);

  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kA, id);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->holders_size(), 2);
  // The owner leaving does not free a buffer someone else holds; its grant
  // goes with it.
  reg_.Leave(kA);
  EXPECT_EQ(Stats().live_buffers(), 1u);
  EXPECT_EQ(Stats().grants(), 0u);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  EXPECT_EQ(Stats().live_buffers(), 0u);
}

TEST_F(RegistryTest, RefusedShareAndImportChangeNothing) {
  const uint64_t id = AddN(kA, 1)[0];
  EXPECT_EQ(reg_.Share(kA, id, [](CpuAccess) -> absl::StatusOr<GrantView> {
                  return absl::PermissionDeniedError("no");
                }).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(2); })
                .status().code(),
            StatusCode::kNotFound);  // B does not hold it
  EXPECT_EQ(Stats().grants(), 0u);

  absl::StatusOr<v1::Grant> grant =
      reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(reg_.Import(kB, grant->token(), [](const GrantView&) -> absl::StatusOr<CpuAccess> {
                  return absl::PermissionDeniedError("not for you");
                }).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Import(kB, "feed", [](const GrantView&) {
                  return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
                }).status().code(),
            StatusCode::kNotFound);
}

TEST_F(RegistryTest, ImportKeepsTheWiderRightsOfASessionThatAlreadyHolds) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(1); });
  ASSERT_TRUE(grant.ok());
  auto imported = reg_.Import(kA, grant->token(), [](const GrantView&) {
    return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
  });
  ASSERT_TRUE(imported.ok());
  EXPECT_FALSE(imported->newly_held);
  absl::StatusOr<v1::BufferInfo> d = reg_.Describe(kA, id);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ_WRITE);
  EXPECT_EQ(d->holders_size(), 1);
}

// Two imports of one buffer by one session, their deliveries racing: the
// hold the first made stays while either was delivered, whichever order
// they settle in, and goes when neither was.
TEST_F(RegistryTest, AFailedImportKeepsTheHoldAConcurrentOneDelivered) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  auto import_once = [&]() { return reg_.Import(kB, grant->token(), Accept); };
  for (const bool first_fails : {true, false}) {
    SCOPED_TRACE(first_fails ? "the first fails" : "the second fails");
    absl::StatusOr<Registry::Imported> first = import_once();
    absl::StatusOr<Registry::Imported> second = import_once();
    ASSERT_TRUE(first.ok() && second.ok());
    EXPECT_TRUE(first->newly_held);
    EXPECT_FALSE(second->newly_held);
    ASSERT_NE(first->arrival, 0u);
    EXPECT_EQ(second->arrival, first->arrival) << "it came while the first was on its way";
    // The failed one settles first, then the delivered one; then the other
    // way round.
    const Registry::Imported& failed = first_fails ? *first : *second;
    const Registry::Imported& delivered = first_fails ? *second : *first;
    reg_.SettleImport(kB, id, failed.arrival, false);
    EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "the other is still on its way";
    reg_.SettleImport(kB, id, delivered.arrival, true);
    EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "one reached the client";
    ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  }

  // Neither delivered: the hold goes with the last.
  absl::StatusOr<Registry::Imported> a = import_once();
  absl::StatusOr<Registry::Imported> b = import_once();
  ASSERT_TRUE(a.ok() && b.ok());
  reg_.SettleImport(kB, id, a->arrival, false);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  reg_.SettleImport(kB, id, b->arrival, false);
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);

  // An import that settles after its hold went and a new one came does
  // not touch the new one's.
  absl::StatusOr<Registry::Imported> old = import_once();
  ASSERT_TRUE(old.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  absl::StatusOr<Registry::Imported> fresh = import_once();
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->arrival, old->arrival);
  reg_.SettleImport(kB, id, old->arrival, false);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  reg_.SettleImport(kB, id, fresh->arrival, true);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  // A holder that imports again settles nothing.
  absl::StatusOr<Registry::Imported> again = import_once();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->arrival, 0u);
}

TEST_F(RegistryTest, RevokeIsTheGrantersAndTheTokenDiesWithTheBuffer) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(reg_.Revoke(kB, grant->id(), false).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Revoke(kA, grant->id(), false).ok());
  EXPECT_EQ(reg_.Revoke(kA, grant->id(), false).status().code(), StatusCode::kNotFound);
  auto accept = [](const GrantView&) {
    return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
  };
  EXPECT_EQ(reg_.Import(kB, grant->token(), accept).status().code(),
            StatusCode::kNotFound);

  auto again = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(reg_.Import(kB, again->token(), accept).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Stats().grants(), 0u);
}

TEST_F(RegistryTest, ReadOnlyHolderCannotSetTheOwnersMetadata) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(reg_.Import(kB, grant->token(), [](const GrantView&) {
                    return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
                  }).ok());
  v1::SetMetadataRequest req;
  req.set_buffer_id(id);
  req.set_type(v1::METADATA_DATASPACE);
  req.mutable_value()->set_dataspace(142671872);
  EXPECT_EQ(reg_.SetMetadata(kB, req).status().code(),
            StatusCode::kPermissionDenied);
  absl::StatusOr<v1::BufferInfo> set = reg_.SetMetadata(kA, req);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->metadata().dataspace(), 142671872);
  // The consumer sees it.
  EXPECT_EQ(reg_.Describe(kB, id)->metadata().dataspace(), 142671872);
  req.set_buffer_id(999);
  EXPECT_EQ(reg_.SetMetadata(kA, req).status().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, ListShowsOwnBuffersOrAllWithHoldersAndDumpCountsThem) {
  const uint64_t a = AddN(kA, 1)[0];
  AddN(kB, 2);
  v1::ListResponse mine = reg_.List(kA, false);
  ASSERT_EQ(mine.buffers_size(), 1);
  EXPECT_EQ(mine.buffers(0).id(), a);
  EXPECT_EQ(mine.buffers(0).holders_size(), 0);
  v1::ListResponse all = reg_.List(kA, true);
  EXPECT_EQ(all.buffers_size(), 3);
  for (const auto& b : all.buffers()) {
    ASSERT_EQ(b.holders_size(), 1);
    EXPECT_EQ(b.holders(0).pid(), b.id() == a ? 101u : 102u);
  }
  v1::DumpResponse dump;
  reg_.FillDump(&dump);
  ASSERT_EQ(dump.sessions_size(), 2);
  for (const auto& s : dump.sessions()) {
    EXPECT_EQ(s.owned_buffers(), s.session_id() == kA ? 1u : 2u);
    EXPECT_EQ(s.exe(), "/bin/test");
  }
}

TEST_F(RegistryTest, TheLastHoldersReleaseClosesTheDaemonsFd) {
  std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh()};
  std::weak_ptr<BufferRecord> weak = fresh[0];
  v1::AllocateResponse reply;
  ASSERT_TRUE(reg_.Add(kA, fresh, CpuAccess::kReadWrite, NoQuota, &reply).ok());
  fresh.clear();
  ASSERT_TRUE(reg_.Release(kA, {reply.buffers(0).id()}).ok());
  reg_.FlushReaper();
  EXPECT_TRUE(weak.expired());
}

// Live revoke: an import's views come back to be cut off, and a session
// that held the buffer only through that grant stops holding it.
TEST_F(RegistryTest, LiveRevokeCutsTheImportsOfThatGrantOnly) {
  const uint64_t id = AddN(kA, 1)[0];
  auto first = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(first.ok());
  GrantView rw = ReadGrantForUid(2);
  rw.access = CpuAccess::kReadWrite;
  auto second = reg_.Share(kA, id, [&](CpuAccess) { return rw; });
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
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  auto also_to_b = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(to_b.ok() && also_to_b.ok());
  ASSERT_TRUE(ImportView(kB, *to_b, id, CpuAccess::kRead, 601));
  // B shares on: to itself, and to C, who imports.
  auto b_to_b = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  auto b_to_c = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
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
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(to_b.ok());
  ASSERT_TRUE(ImportView(kB, *to_b, id, CpuAccess::kRead, 701));
  auto b_to_c = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
  ASSERT_TRUE(b_to_c.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, to_b->id(), true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(reg_.Import(kC, b_to_c->token(), Accept).status().code(), StatusCode::kNotFound);
}

// An importer that let go (Release, or its session ended) may still have
// the fd somewhere: revoking the grant cuts those views off too.
TEST_F(RegistryTest, LiveRevokeCutsTheViewsOfImportersThatLetGo) {
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(2));
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
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
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto g1 = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  auto g2 = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  auto g3 = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(g1.ok() && g2.ok() && g3.ok());
  uint64_t view = 900;
  for (const auto* g : {&*g1, &*g2, &*g3}) {
    ASSERT_TRUE(ImportView(kB, *g, id, CpuAccess::kRead, ++view));
  }
  // B shares on to C (through g1, g2 and g3), who imports.
  auto to_c = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
  ASSERT_TRUE(to_c.ok());
  ASSERT_TRUE(ImportView(kC, *to_c, id, CpuAccess::kRead, 909));
  // g3 goes; then B shares again (through g1 and g2 only).
  ASSERT_TRUE(reg_.Revoke(kA, g3->id(), true).ok());
  auto later = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
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
  auto narrow = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
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
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(reg_.Import(kB, grant->token(), Accept).ok());  // not delivered yet
  ASSERT_TRUE(reg_.Revoke(kA, grant->id(), true).ok());
  EXPECT_EQ(reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(2); }).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(reg_.AddImportView(kB, grant->id(), id, CpuAccess::kRead, 1).code(),
            StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());

  auto kept = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
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

// Share and Import cost a client nothing, and each leaves state in
// hallocd: both are bounded per session, with a reason, and the refusal
// changes nothing.
TEST_F(RegistryTest, GrantsAndRepeatedImportsAreBoundedPerSession) {
  const uint64_t id = AddN(kA, 1)[0];
  std::vector<uint64_t> grants;
  for (size_t i = 0; i < Registry::kMaxGrantsPerSession; ++i) {
    auto g = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
    ASSERT_TRUE(g.ok()) << i << ": " << g.status();
    grants.push_back(g->id());
  }
  auto over = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Stats().grants(), Registry::kMaxGrantsPerSession);
  ASSERT_TRUE(reg_.Revoke(kA, grants.back(), false).ok());
  EXPECT_TRUE(reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); }).ok());

  auto token = reg_.Share(kB, AddN(kB, 1)[0], [&](CpuAccess) { return ReadGrantForUid(1); });
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
  auto read = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  GrantView rw = ReadGrantForUid(2);
  rw.access = CpuAccess::kReadWrite;
  auto read_write = reg_.Share(kA, id, [&](CpuAccess) { return rw; });
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
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(3));
  const uint64_t id = AddN(kA, 1)[0];
  auto to_b = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(to_b.ok());
  ASSERT_TRUE(reg_.Import(kB, to_b->token(), Accept).ok());  // no view noted yet
  auto b_to_c = reg_.Share(kB, id, [&](CpuAccess) { return ReadGrantForUid(3); });
  ASSERT_TRUE(b_to_c.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());  // its import failed, say
  ASSERT_TRUE(reg_.Revoke(kA, to_b->id(), true).ok());
  EXPECT_EQ(reg_.Import(kC, b_to_c->token(), Accept).status().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, RevokeWithoutLiveLeavesImportersHolding) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = reg_.Share(kA, id, [&](CpuAccess) { return ReadGrantForUid(2); });
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(reg_.Import(kB, grant->token(), [](const GrantView&) {
                    return absl::StatusOr<CpuAccess>(CpuAccess::kRead);
                  }).ok());
  absl::StatusOr<Registry::Revoked> r = reg_.Revoke(kA, grant->id(), false);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->views.empty());
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
}

}  // namespace
}  // namespace halloc
