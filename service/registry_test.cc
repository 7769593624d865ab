#include "service/registry.h"

#include <sys/mman.h>

#include <algorithm>
#include <memory>
#include <set>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/registry_testing.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

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
  ASSERT_TRUE(reg_.FillDump(&dump).ok());
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

// A user who is no operator reads Stats with its own uid's rows alone;
// the totals stay everyone's.
TEST_F(RegistryTest, StatsForOneUidHoldOnlyThatUidsRows) {
  AddN(kA, 2);  // charged to app/1
  std::vector<std::shared_ptr<BufferRecord>> bs = {Fresh("app/2")};
  v1::AllocateResponse reply;
  ASSERT_TRUE(reg_.Add(kB, bs, CpuAccess::kReadWrite, NoQuota, &reply).ok());
  v1::StatsResponse all = Stats();
  EXPECT_EQ(all.clients_size(), 2);
  v1::StatsResponse mine;
  reg_.FillStats(&mine, /*only_uid=*/2);
  ASSERT_EQ(mine.clients_size(), 1);
  EXPECT_EQ(mine.clients(0).uid(), 2u);
  EXPECT_EQ(mine.clients(0).buffers(), 1u);
  EXPECT_EQ(mine.live_buffers(), 3u);
  v1::StatsResponse none;
  reg_.FillStats(&none, /*only_uid=*/7);
  EXPECT_EQ(none.clients_size(), 0);
  EXPECT_EQ(none.live_buffers(), 3u);
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
  ASSERT_TRUE(reg_.FillDump(&dump).ok());
  EXPECT_EQ(dump.clients_size(), 0);  // nothing charged any more
  EXPECT_EQ(reg_.Release(kA, {ids[0]}).code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, ALeftSessionCannotAddAndItsHoldsAndGrantsGo) {
  std::vector<uint64_t> ids = AddN(kA, 2);
  ASSERT_TRUE(ShareTo(kA, ids[0], 2).ok());
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

// An importer's Describe counts every holder but names only itself: who
// else holds the buffer (their sessions and pids) is the owner's business.
// The owner sees them all.
TEST_F(RegistryTest, AnImporterSeesHowManyHoldTheBufferNotWho) {
  const Onward o = OnwardToC();  // A owns, B and C import
  absl::StatusOr<v1::BufferInfo> by_b = reg_.Describe(kB, o.id);
  ASSERT_TRUE(by_b.ok()) << by_b.status();
  ASSERT_EQ(by_b->holders_size(), 3);
  int callers = 0, owners = 0;
  for (const v1::Holder& h : by_b->holders()) {
    if (h.caller()) {
      ++callers;
      EXPECT_EQ(h.session_id(), kB);
      EXPECT_EQ(h.pid(), 102);
      EXPECT_EQ(h.uid(), 2u);
    } else {
      EXPECT_EQ(h.session_id(), 0u) << "another holder's session shown to an importer";
      EXPECT_EQ(h.pid(), 0) << "another holder's pid shown to an importer";
      EXPECT_EQ(h.uid(), h.owner() ? 1u : 0u) << "only the owner's uid (owner_uid) shows";
    }
    owners += h.owner();
  }
  EXPECT_EQ(callers, 1);
  EXPECT_EQ(owners, 1);

  absl::StatusOr<v1::BufferInfo> by_a = reg_.Describe(kA, o.id);
  ASSERT_TRUE(by_a.ok()) << by_a.status();
  ASSERT_EQ(by_a->holders_size(), 3);
  absl::flat_hash_set<int32_t> pids;
  for (const v1::Holder& h : by_a->holders()) {
    EXPECT_NE(h.session_id(), 0u);
    pids.insert(h.pid());
  }
  EXPECT_EQ(pids, (absl::flat_hash_set<int32_t>{101, 102, 103}));

  // How many imports were made: the owner's to know, and it counts those
  // whose holders let go since.
  EXPECT_EQ(by_b->imports_total(), 0u) << "an importer is told the import count";
  EXPECT_EQ(by_a->imports_total(), 2u);
  ASSERT_TRUE(reg_.Release(kC, {o.id}).ok());
  by_a = reg_.Describe(kA, o.id);
  ASSERT_TRUE(by_a.ok()) << by_a.status();
  EXPECT_EQ(by_a->holders_size(), 2);
  EXPECT_EQ(by_a->imports_total(), 2u);
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
  EXPECT_EQ(ShareTo(kB, id, 2)
                .status().code(),
            StatusCode::kNotFound);  // B does not hold it
  EXPECT_EQ(Stats().grants(), 0u);

  absl::StatusOr<v1::Grant> grant =
      ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(reg_.Import(kB, grant->token(), [](const GrantView&) -> absl::StatusOr<CpuAccess> {
                  return absl::PermissionDeniedError("not for you");
                }).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reg_.Import(kB, "feed", Accept).status().code(),
            StatusCode::kNotFound);
}

TEST_F(RegistryTest, ImportKeepsTheWiderRightsOfASessionThatAlreadyHolds) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 1);
  ASSERT_TRUE(grant.ok());
  auto imported = reg_.Import(kA, grant->token(), Accept);
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
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  auto import_once = [&]() { return reg_.Import(kB, grant->token(), Accept); };
  for (const bool first_fails : {true, false}) {
    SCOPED_TRACE(first_fails ? "the first fails" : "the second fails");
    absl::StatusOr<Registry::Imported> first = import_once();
    absl::StatusOr<Registry::Imported> second = import_once();
    ASSERT_TRUE(first.ok() && second.ok());
    EXPECT_TRUE(first->newly_held);
    EXPECT_FALSE(second->newly_held);
    ASSERT_NE(first->generation, 0u);
    EXPECT_EQ(second->generation, first->generation) << "it came while the first was on its way";
    // The failed one settles first, then the delivered one; then the other
    // way round.
    const Registry::Imported& failed = first_fails ? *first : *second;
    const Registry::Imported& delivered = first_fails ? *second : *first;
    reg_.SettleImport(kB, id, failed.generation, false);
    EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "the other is still on its way";
    reg_.SettleImport(kB, id, delivered.generation, true);
    EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "one reached the client";
    ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  }

  // Neither delivered: the hold goes with the last.
  absl::StatusOr<Registry::Imported> a = import_once();
  absl::StatusOr<Registry::Imported> b = import_once();
  ASSERT_TRUE(a.ok() && b.ok());
  reg_.SettleImport(kB, id, a->generation, false);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  reg_.SettleImport(kB, id, b->generation, false);
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  // The owner counts the two imports delivered above, none of the others.
  absl::StatusOr<v1::BufferInfo> owners = reg_.Describe(kA, id);
  ASSERT_TRUE(owners.ok()) << owners.status();
  EXPECT_EQ(owners->imports_total(), 2u);

  // An import that settles after its hold went and a new one came does
  // not touch the new one's.
  absl::StatusOr<Registry::Imported> old = import_once();
  ASSERT_TRUE(old.ok());
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  absl::StatusOr<Registry::Imported> fresh = import_once();
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->generation, old->generation);
  reg_.SettleImport(kB, id, old->generation, false);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  reg_.SettleImport(kB, id, fresh->generation, true);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  // A holder that imports again adds a reference to the same hold.
  absl::StatusOr<Registry::Imported> again = import_once();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->newly_held);
  reg_.SettleImport(kB, id, again->generation, false);
  EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "only that import's reference went";
}

// Each import is one reference on the session's hold (gralloc's
// importBuffer/freeBuffer): a reference given back takes that one alone,
// the hold goes with the last, and a plain Release takes the hold whole.
TEST_F(RegistryTest, EachImportIsOneReferenceOnTheHold) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  auto import_delivered = [&]() {
    absl::StatusOr<Registry::Imported> i = reg_.Import(kB, grant->token(), Accept);
    ASSERT_TRUE(i.ok()) << i.status();
    reg_.SettleImport(kB, id, i->generation, true);
  };
  import_delivered();
  import_delivered();
  ASSERT_TRUE(reg_.Release(kB, {id}, /*import_references=*/true).ok());
  EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "the other import's reference holds it";
  ASSERT_TRUE(reg_.Release(kB, {id}, /*import_references=*/true).ok());
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound) << "the last went";
  EXPECT_EQ(reg_.Release(kB, {id}, true).code(), StatusCode::kNotFound) << "none is left";

  // An id named twice gives back two.
  import_delivered();
  import_delivered();
  import_delivered();
  ASSERT_TRUE(reg_.Release(kB, {id, id}, true).ok());
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  // A plain Release takes the hold whatever its references.
  import_delivered();
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);

  // The owner's allocation is a reference: an import of its own buffer
  // given back leaves the owner holding.
  auto to_self = ShareTo(kA, id, 1);
  ASSERT_TRUE(to_self.ok()) << to_self.status();
  absl::StatusOr<Registry::Imported> own = reg_.Import(kA, to_self->token(), Accept);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_FALSE(own->newly_held);
  reg_.SettleImport(kA, id, own->generation, true);
  ASSERT_TRUE(reg_.Release(kA, {id}, true).ok());
  EXPECT_TRUE(reg_.Describe(kA, id).ok()) << "the allocation's reference is left";
  ASSERT_TRUE(reg_.Release(kA, {id}, true).ok());
  EXPECT_EQ(reg_.Describe(kA, id).status().code(), StatusCode::kNotFound);
}

// The case references exist for: a client gives back an import it did not
// keep (its call gave up) while another import of the same buffer is in
// flight, which will be answered "held already" and rely on the hold. The
// reference goes, the hold stays for the import in flight; before, the
// client could not give anything back while imports overlapped.
TEST_F(RegistryTest, AReferenceGivenBackLeavesTheHoldAnImportInFlightReliesOn) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  absl::StatusOr<Registry::Imported> gave_up = reg_.Import(kB, grant->token(), Accept);
  ASSERT_TRUE(gave_up.ok());
  EXPECT_TRUE(gave_up->newly_held);
  absl::StatusOr<Registry::Imported> in_flight = reg_.Import(kB, grant->token(), Accept);
  ASSERT_TRUE(in_flight.ok());
  EXPECT_FALSE(in_flight->newly_held);
  reg_.SettleImport(kB, id, gave_up->generation, true);
  // The client read the first's reply after its call gave up: it gives
  // that import's reference back before the second is even settled.
  ASSERT_TRUE(reg_.Release(kB, {id}, /*import_references=*/true).ok());
  EXPECT_TRUE(reg_.Describe(kB, id).ok()) << "the import in flight relies on the hold";
  reg_.SettleImport(kB, id, in_flight->generation, true);
  EXPECT_TRUE(reg_.Describe(kB, id).ok());
  // Its caller gives that one back too, before it was even settled this
  // time: the hold goes, and the late settle finds nothing to do.
  absl::StatusOr<Registry::Imported> last = reg_.Import(kB, grant->token(), Accept);
  ASSERT_TRUE(last.ok());
  ASSERT_TRUE(reg_.Release(kB, {id, id}, true).ok());
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  reg_.SettleImport(kB, id, last->generation, true);
  EXPECT_EQ(reg_.Describe(kB, id).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

TEST_F(RegistryTest, RevokeIsTheGrantersAndTheTokenDiesWithTheBuffer) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(reg_.Revoke(kB, grant->id(), false).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(reg_.Revoke(kA, grant->id(), false).ok());
  EXPECT_EQ(reg_.Revoke(kA, grant->id(), false).status().code(), StatusCode::kNotFound);
  auto accept = Accept;
  EXPECT_EQ(reg_.Import(kB, grant->token(), accept).status().code(),
            StatusCode::kNotFound);

  auto again = ShareTo(kA, id, 2);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(reg_.Import(kB, again->token(), accept).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Stats().grants(), 0u);
}

TEST_F(RegistryTest, ReadOnlyHolderCannotSetTheOwnersMetadata) {
  const uint64_t id = AddN(kA, 1)[0];
  auto grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(reg_.Import(kB, grant->token(), Accept).ok());
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
  ASSERT_TRUE(reg_.FillDump(&dump).ok());
  ASSERT_EQ(dump.sessions_size(), 2);
  for (const auto& s : dump.sessions()) {
    EXPECT_EQ(s.owned_buffers(), s.session_id() == kA ? 1u : 2u);
    EXPECT_EQ(s.exe(), "/bin/test");
  }
}

// Listings come in pages by id: each one the smallest ids past the last
// page's, next_page_token set while more follow; the pages together are
// the whole listing, each buffer once.
TEST_F(RegistryTest, ListsComePageByPageInOrderOfId) {
  std::vector<uint64_t> mine = AddN(kA, 4);  // the fixture's most per session
  AddN(kB, 3);
  std::sort(mine.begin(), mine.end());
  for (const bool all : {false, true}) {
    SCOPED_TRACE(all ? "all" : "mine");
    std::vector<uint64_t> seen;
    uint64_t after = 0;
    int pages = 0;
    for (;;) {
      const v1::ListResponse page = reg_.List(kA, all, after, 3);
      ++pages;
      ASSERT_LE(page.buffers_size(), 3);
      for (const auto& b : page.buffers()) seen.push_back(b.id());
      if (page.next_page_token().empty()) break;
      ASSERT_EQ(page.next_page_token(), absl::StrCat(seen.back()));
      after = seen.back();
      ASSERT_LT(pages, 10);
    }
    EXPECT_EQ(pages, all ? 3 : 2);  // 3+1 of 4, 3+3+1 of 7
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
    if (!all) EXPECT_EQ(seen, mine);
    EXPECT_EQ(seen.size(), all ? 7u : 4u);
  }
  // A page that holds exactly what is left says nothing follows.
  EXPECT_EQ(reg_.List(kA, false, mine[0], 3).buffers_size(), 3);
  EXPECT_EQ(reg_.List(kA, false, mine[0], 3).next_page_token(), "");
}

// A session's executable path is any bytes its owner chose; Dump's proto3
// string carries it as it is when it is UTF-8, escaped when not, so that
// the answer still parses (one such session made Dump unreadable).
TEST_F(RegistryTest, DumpCarriesAnyExecutablePathAsValidUtf8) {
  constexpr uint64_t kC = 30, kD = 40;
  Identity utf8 = Uid(3), raw = Uid(4);
  utf8.exe = "/opt/caf\xc3\xa9/app";
  raw.exe = "/tmp/\xff\n";
  reg_.Join(kC, utf8);
  reg_.Join(kD, raw);
  v1::DumpResponse dump;
  ASSERT_TRUE(reg_.FillDump(&dump).ok());
  v1::DumpResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(dump.SerializeAsString()));
  std::set<std::string> exes;
  for (const auto& s : parsed.sessions()) exes.insert(s.exe());
  EXPECT_TRUE(exes.count("/opt/caf\xc3\xa9/app")) << "valid UTF-8 kept as it is";
  EXPECT_TRUE(exes.count("/tmp/\\xff\\n")) << "the rest escaped";
}

// A path may be 4 KiB, each byte escaped to 4: 256 sessions of one user
// made Dump larger than a gRPC client takes (4 MiB), and every operator's
// `hallocctl dump` failed (a review helper's attack). Past kLoggedPathBytes
// Dump shows the path's beginning and its length, as the log does.
TEST_F(RegistryTest, DumpCutsLongExecutablePaths) {
  constexpr uint64_t kC = 30;
  Identity long_path = Uid(3);
  long_path.exe = "/" + std::string(4000, '\xff');
  reg_.Join(kC, long_path);
  v1::DumpResponse dump;
  ASSERT_TRUE(reg_.FillDump(&dump).ok());
  std::string exe;
  for (const auto& u : dump.sessions()) {
    if (u.session_id() == kC) exe = u.exe();
  }
  ASSERT_FALSE(exe.empty());
  EXPECT_LE(exe.size(), 4 * kLoggedPathBytes + 64) << exe.size();
  EXPECT_TRUE(absl::StartsWith(exe, "/\\xff\\xff")) << exe.substr(0, 40);
  EXPECT_TRUE(absl::StrContains(exe, "4001"))
      << "its length is said: " << exe.substr(exe.size() - 40);
}

// Dump comes in pages (sessions by id, then clients), so that no reply
// grows with the sessions on the machine: every row once, in order, and a
// token not from Dump is INVALID_ARGUMENT.
TEST_F(RegistryTest, DumpComesInPages) {
  constexpr uint64_t kC = 30;
  reg_.Join(kC, Uid(3));
  for (const auto& [session, key] :
       std::vector<std::pair<uint64_t, std::string>>{{kA, "app/1"}, {kB, "cam/2"}}) {
    std::vector<std::shared_ptr<BufferRecord>> fresh = {Fresh(key)};
    ASSERT_TRUE(reg_.Add(session, fresh, CpuAccess::kReadWrite, NoQuota, nullptr).ok());
  }
  // 3 sessions and 2 clients: pages of 2 are [s s] [s c] [c], and pages of
  // 3 end the sessions exactly: [s s s] [c c].
  for (const size_t page_size : {2u, 3u, 1u, 1000u}) {
    std::vector<std::string> rows;
    std::string token;
    int pages = 0;
    do {
      v1::DumpResponse page;
      ASSERT_TRUE(reg_.FillDump(&page, token, page_size).ok()) << token;
      ASSERT_LE(static_cast<size_t>(page.sessions_size() + page.clients_size()), page_size);
      for (const auto& u : page.sessions()) rows.push_back(absl::StrCat("s", u.session_id()));
      for (const auto& q : page.clients()) rows.push_back(absl::StrCat(q.client(), q.uid()));
      token = page.next_page_token();
      ++pages;
    } while (!token.empty() && pages < 10);
    EXPECT_EQ(rows, std::vector<std::string>({absl::StrCat("s", kA), absl::StrCat("s", kB),
                                              absl::StrCat("s", kC), "app1", "cam2"}))
        << "pages of " << page_size;
    EXPECT_EQ(pages, (5 + page_size - 1) / page_size) << "pages of " << page_size;
  }
  for (const char* bad : {"x", "s", "s-1", "s12abc", "s99999999999999999999999", "c!!", "12"}) {
    v1::DumpResponse page;
    EXPECT_EQ(reg_.FillDump(&page, bad, 2).code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(page.sessions_size() + page.clients_size(), 0) << bad;
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

}  // namespace
}  // namespace halloc
