// The registry's import references (registry.h, Import): each import is one
// reference on its session's hold, given back by Release with
// import_references; a give-back names the hold by its generation, so
// that one coming after its hold went cannot take a newer hold's.
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "service/registry.h"
#include "service/registry_testing.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

class RegistryReferencesTest : public RegistryTest {
 protected:
  // B imports `grant` (of buffer `id`), delivered.
  Registry::Imported Delivered(const v1::Grant& grant, uint64_t id) {
    absl::StatusOr<Registry::Imported> i = reg_.Import(kB, grant.token(), Accept);
    EXPECT_TRUE(i.ok()) << i.status();
    if (!i.ok()) return {};
    reg_.SettleImport(kB, id, i->generation, true);
    return *std::move(i);
  }
  bool BHolds(uint64_t id) { return reg_.Describe(kB, id).ok(); }
};

// The reviewer's case: an import's reply reached no caller (its call gave
// up), and its reference is on its way back; meanwhile another thread of
// the client Released the buffer whole, and a third imported it again: a
// new hold, which its caller uses. The late give-back names the old
// hold's generation: it is done (that hold went, with its references),
// and the new hold keeps its one reference.
TEST_F(RegistryReferencesTest, ALateGiveBackLeavesTheHoldMadeAfterAPlainRelease) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  const Registry::Imported abandoned = Delivered(*grant, id);
  EXPECT_TRUE(abandoned.newly_held);
  ASSERT_NE(abandoned.generation, 0u);
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  // Imported again while the plain Release was on its way: under way when
  // the hold goes, then a new hold of its own.
  absl::StatusOr<Registry::Imported> in_use = reg_.Import(kB, grant->token(), Accept);
  ASSERT_TRUE(in_use.ok());
  EXPECT_TRUE(in_use->newly_held);
  EXPECT_NE(in_use->generation, abandoned.generation) << "a new hold, a new generation";
  reg_.SettleImport(kB, id, in_use->generation, true);

  ASSERT_TRUE(reg_.Release(kB, {id}, true, {abandoned.generation}).ok());
  EXPECT_TRUE(BHolds(id)) << "the late give-back took the new hold's only reference";
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
  // Its own give-back, named right, takes it.
  ASSERT_TRUE(reg_.Release(kB, {id}, true, {in_use->generation}).ok());
  EXPECT_FALSE(BHolds(id));
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

// The same while an import is still on its way when the hold goes: the
// Release drops the hold, the import in flight makes a new one; the give-
// back of the first (the hold it was on) leaves the one the second made.
TEST_F(RegistryReferencesTest, APlainReleaseWhileAnImportIsUnderWayEndsTheOldHoldsReferences) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  absl::StatusOr<Registry::Imported> first = reg_.Import(kB, grant->token(), Accept);
  absl::StatusOr<Registry::Imported> second = reg_.Import(kB, grant->token(), Accept);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(second->generation, first->generation) << "both on the one hold";
  reg_.SettleImport(kB, id, first->generation, true);
  ASSERT_TRUE(reg_.Release(kB, {id}).ok());
  // The second settles after its hold went: nothing to do.
  reg_.SettleImport(kB, id, second->generation, true);
  EXPECT_FALSE(BHolds(id));
  const Registry::Imported newer = Delivered(*grant, id);
  ASSERT_TRUE(newer.newly_held);
  // Both earlier imports' references come back late, in one request.
  ASSERT_TRUE(reg_.Release(kB, {id, id}, true, {first->generation, second->generation}).ok());
  EXPECT_TRUE(BHolds(id));
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

// A hold a revoke took, imported again through another grant: the revoked
// hold's give-back leaves the new one.
TEST_F(RegistryReferencesTest, ALateGiveBackLeavesTheHoldMadeAfterARevoke) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> revoked = ShareTo(kA, id, 2);
  absl::StatusOr<v1::Grant> other = ShareTo(kA, id, 2);
  ASSERT_TRUE(revoked.ok() && other.ok());
  const Registry::Imported old = Delivered(*revoked, id);
  ASSERT_TRUE(reg_.Revoke(kA, revoked->id(), /*live=*/false).ok());
  EXPECT_FALSE(BHolds(id));
  const Registry::Imported newer = Delivered(*other, id);
  ASSERT_TRUE(newer.newly_held);
  EXPECT_NE(newer.generation, old.generation);
  ASSERT_TRUE(reg_.Release(kB, {id}, true, {old.generation}).ok());
  EXPECT_TRUE(BHolds(id));
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

// A hold keeps its generation for its life, also through imports settled
// in between (it is not a new one each time its references come back to
// one), and an allocation's hold gets one at its first import.
TEST_F(RegistryReferencesTest, AHoldKeepsItsGenerationWhileItLives) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  const Registry::Imported a = Delivered(*grant, id);
  const Registry::Imported b = Delivered(*grant, id);
  EXPECT_EQ(b.generation, a.generation);
  ASSERT_TRUE(reg_.Release(kB, {id}, true, {b.generation}).ok());
  const Registry::Imported c = Delivered(*grant, id);
  EXPECT_EQ(c.generation, a.generation) << "the same hold, one reference left in between";
  ASSERT_TRUE(reg_.Release(kB, {id, id}, true, {a.generation, c.generation}).ok());
  EXPECT_FALSE(BHolds(id)) << "the hold went with its last reference";

  // The owner imports its own buffer: that import's generation names the
  // allocation's hold, and its give-back leaves the allocation's reference.
  absl::StatusOr<v1::Grant> to_self = ShareTo(kA, id, 1);
  ASSERT_TRUE(to_self.ok());
  absl::StatusOr<Registry::Imported> own = reg_.Import(kA, to_self->token(), Accept);
  ASSERT_TRUE(own.ok());
  EXPECT_FALSE(own->newly_held);
  EXPECT_NE(own->generation, a.generation);
  reg_.SettleImport(kA, id, own->generation, true);
  ASSERT_TRUE(reg_.Release(kA, {id}, true, {own->generation}).ok());
  EXPECT_TRUE(reg_.Describe(kA, id).ok()) << "the allocation's reference is left";
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

// A give-back naming a hold gone since does not fail the others in its
// request, even with no hold of that id left (where one without a
// generation is NOT_FOUND, as before); 0 is any hold.
TEST_F(RegistryReferencesTest, AGiveBackOfAGoneHoldIsDoneAndTheRestGoOn) {
  const std::vector<uint64_t> ids = AddN(kA, 2);
  absl::StatusOr<v1::Grant> g0 = ShareTo(kA, ids[0], 2);
  absl::StatusOr<v1::Grant> g1 = ShareTo(kA, ids[1], 2);
  ASSERT_TRUE(g0.ok() && g1.ok());
  const Registry::Imported gone = Delivered(*g0, ids[0]);
  ASSERT_TRUE(reg_.Release(kB, {ids[0]}).ok());
  const Registry::Imported kept = Delivered(*g1, ids[1]);
  EXPECT_EQ(reg_.Release(kB, {ids[0], ids[1]}, true).code(), StatusCode::kNotFound);
  EXPECT_TRUE(BHolds(ids[1])) << "all or nothing";
  ASSERT_TRUE(reg_.Release(kB, {ids[0], ids[1]}, true, {gone.generation, kept.generation}).ok());
  EXPECT_FALSE(BHolds(ids[1])) << "its reference went back";

  Delivered(*g1, ids[1]);
  ASSERT_TRUE(reg_.Release(kB, {ids[1]}, true, {0}).ok());
  EXPECT_FALSE(BHolds(ids[1]));
  EXPECT_EQ(reg_.Release(kB, {ids[1]}, true, {0}).code(), StatusCode::kNotFound);
  EXPECT_TRUE(reg_.CheckLinksForTesting().ok());
}

// Generations one per id, and with import references only; else nothing
// is released.
TEST_F(RegistryReferencesTest, GenerationsThatDoNotMatchTheIdsAreInvalid) {
  const uint64_t id = AddN(kA, 1)[0];
  absl::StatusOr<v1::Grant> grant = ShareTo(kA, id, 2);
  ASSERT_TRUE(grant.ok());
  const Registry::Imported i = Delivered(*grant, id);
  EXPECT_EQ(reg_.Release(kB, {id, id}, true, {i.generation}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(reg_.Release(kB, {id}, true, {i.generation, i.generation}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(reg_.Release(kB, {id}, false, {i.generation}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(BHolds(id));
  ASSERT_TRUE(reg_.Release(kB, {id}, true, {i.generation}).ok());
  EXPECT_FALSE(BHolds(id));
}

}  // namespace
}  // namespace halloc
