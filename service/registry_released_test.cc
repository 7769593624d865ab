// The registry's released memory: a buffer nobody holds stays charged to
// its owner while any fd or mapping of it is left (registry.h).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "service/registry.h"
#include "service/util/last_reference_poll.h"

namespace halloc {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kA = 10;

// At most one buffer per client.
absl::Status OneBuffer(uint64_t buffers, uint64_t) {
  if (buffers + 1 > 1) {
    return absl::ResourceExhaustedError(absl::StrCat("owns ", buffers));
  }
  return absl::OkStatus();
}

// What AddPage made: the buffer's id (0: refused, with why in `status`)
// and its memory's inode (fd numbers are reused; inodes are not, while
// the memory lives).
struct Added {
  uint64_t id = 0;
  ino_t ino = 0;
  absl::Status status;
  std::weak_ptr<const BufferRecord> record;  // (not kept alive by this)
};

// A one-page buffer of uid `uid`'s (charged to "app/<uid>") added for
// `session` under `quota` as the allocator does: room first (which
// settles), then commit. `client_copy`: what a client would get, the same
// open file.
// `charged_uid`: the uid charged, when not `uid` itself (a subordinate uid's
// user).
Added AddPage(Registry& reg, uint64_t session, uid_t uid, Registry::QuotaJudge quota,
              bool charge_until_gone = true, UniqueFd* client_copy = nullptr,
              std::optional<uid_t> charged_uid = std::nullopt) {
  auto b = std::make_shared<BufferRecord>();
  b->name = "t";
  b->size = kPage;
  b->owner_uid = uid;
  b->owner_client = "app";
  b->charged_to = absl::StrCat("app/", charged_uid.value_or(uid));
  b->charge_until_gone = charge_until_gone;
  b->fd = UniqueFd(::memfd_create("released_test", MFD_CLOEXEC));
  EXPECT_EQ(::ftruncate(b->fd.get(), kPage), 0);
  if (client_copy != nullptr) *client_copy = UniqueFd(::dup(b->fd.get()));
  Added added;
  struct stat st {};
  ::fstat(b->fd.get(), &st);
  added.ino = st.st_ino;
  Registry::Reservation room;
  added.status = reg.CheckRoom(session, 1, b->charged_to, quota, true, &room);
  v1::AllocateResponse reply;
  if (added.status.ok()) {
    added.status =
        reg.Add(session, {b}, CpuAccess::kReadWrite, quota, &reply, std::move(room));
  }
  if (added.status.ok()) added.id = b->id;
  added.record = b;
  return added;
}

// Sessions kA (uid 1) and kA + 1 (uid 2) in `reg`.
constexpr uint64_t kB = kA + 1;
void JoinTwoUids(Registry& reg) {
  Identity one, two;
  one.uid = 1;
  two.uid = 2;
  reg.Join(kA, one);
  reg.Join(kB, two);
}

class ReleasedMemoryTest : public ::testing::Test {
 protected:
  ReleasedMemoryTest() : reg_("memfd", /*dma_bufs=*/false, /*max_buffers_per_session=*/8) {
    Identity id;
    id.uid = 1;
    id.pid = 101;
    reg_.Join(kA, id);
  }

  // A one-page buffer of uid 1's added for `session` under `quota`; its
  // id, or 0 (why in last_).
  uint64_t Add(bool charge_until_gone, UniqueFd* client_copy = nullptr,
               Registry::QuotaJudge quota = OneBuffer, uint64_t session = kA) {
    Added added = AddPage(reg_, session, 1, quota, charge_until_gone, client_copy);
    last_ = added.status;
    return added.id;
  }

  v1::StatsResponse Stats() {
    v1::StatsResponse s;
    reg_.FillStats(&s);
    return s;
  }

  Registry reg_;
  absl::Status last_;
};

TEST_F(ReleasedMemoryTest, StaysChargedWhileTheClientKeepsItsFd) {
  UniqueFd kept;
  const uint64_t id = Add(true, &kept);
  ASSERT_NE(id, 0u) << last_;
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(Add(true), 0u) << "the kept fd still holds a page of the quota";
  EXPECT_EQ(last_.code(), absl::StatusCode::kResourceExhausted) << last_;
  v1::StatsResponse s = Stats();
  EXPECT_EQ(s.live_buffers(), 0u);
  EXPECT_EQ(s.released_held_buffers(), 1u);
  EXPECT_EQ(s.released_held_bytes(), kPage);
  ASSERT_EQ(s.clients_size(), 1);
  EXPECT_EQ(s.clients(0).buffers(), 1u) << "still charged";

  kept.reset();
  EXPECT_NE(Add(true), 0u) << "gone with the last fd: " << last_;
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
}

TEST_F(ReleasedMemoryTest, AMappingKeepsTheChargeAfterEveryFdIsClosed) {
  UniqueFd kept;
  const uint64_t id = Add(true, &kept);
  ASSERT_NE(id, 0u) << last_;
  void* map = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED,
                     kept.get(), 0);
  ASSERT_NE(map, MAP_FAILED);
  kept.reset();
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_EQ(Add(true), 0u) << "mapped memory is still memory";
  ASSERT_EQ(::munmap(map, kPage), 0);
  EXPECT_NE(Add(true), 0u) << last_;
}

TEST_F(ReleasedMemoryTest, MemoryNobodyElseHoldsIsNotChargedAfterRelease) {
  // The client closed its fd first (the usual order): only hallocd's own
  // fd, closed on the reaper thread a moment later, was left. The next
  // Allocate right after the Release must fit.
  for (int round = 0; round < 20; ++round) {
    const uint64_t id = Add(true);
    ASSERT_NE(id, 0u) << "round " << round << ": " << last_;
    ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  }
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
}

TEST_F(ReleasedMemoryTest, ACallerThatMayNotWaitIsToldToAskWhereItMay) {
  // The broker's thread may not wait for pages to be freed: the refusal
  // says that waiting might lift it, and, once the memory is let go of, the
  // waiting call does. A client fd keeps the page charged until then (the
  // reaper alone may close hallocd's fd within 2 ms: no race to lose).
  UniqueFd kept;
  const uint64_t id = Add(true, &kept);
  ASSERT_NE(id, 0u) << last_;
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  absl::Status quick = reg_.CheckRoom(kA, 1, "app/1", OneBuffer, /*may_wait=*/false);
  EXPECT_EQ(quick.code(), absl::StatusCode::kResourceExhausted) << quick;
  EXPECT_TRUE(quick.GetPayload(Registry::kWaitForReleasedMemory).has_value()) << quick;
  kept.reset();
  EXPECT_TRUE(reg_.CheckRoom(kA, 1, "app/1", OneBuffer, /*may_wait=*/true).ok());
}

TEST_F(ReleasedMemoryTest, ARefusalOfTheSessionsOwnLimitNeverWaits) {
  // Only a quota refusal may be lifted by freed memory.
  const uint64_t id = Add(true);
  ASSERT_NE(id, 0u) << last_;
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  absl::Status s = reg_.CheckRoom(kA, 100, "app/1", [](uint64_t, uint64_t) {
    return absl::OkStatus();
  }, /*may_wait=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_FALSE(s.GetPayload(Registry::kWaitForReleasedMemory).has_value()) << s;
}

TEST_F(ReleasedMemoryTest, WithoutChargeUntilGoneTheChargeGoesAtRelease) {
  UniqueFd kept;
  const uint64_t id = Add(false, &kept);
  ASSERT_NE(id, 0u) << last_;
  ASSERT_TRUE(reg_.Release(kA, {id}).ok());
  EXPECT_NE(Add(false), 0u) << last_;
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
}

TEST_F(ReleasedMemoryTest, WhatWentIsForgottenWithoutARefusalOrStats) {
  // Released one by one, never refused and never asked for Stats: what
  // lingers must not grow with every Release (hallocd's memory, and the
  // charge a later quota decision would start from). The reaper is let
  // catch up every 100 (hallocd's own fds are closed on its thread, which a
  // loaded machine may not run for the whole loop: what it has not closed
  // is rightly still charged, and not what this test is about).
  auto no_quota = [](uint64_t, uint64_t) { return absl::OkStatus(); };
  for (int i = 0; i < 2000; ++i) {
    if (i % 100 == 0) reg_.FlushReaper();
    auto b = std::make_shared<BufferRecord>();
    b->size = kPage;
    b->charged_to = "app/1";
    b->charge_until_gone = true;
    b->fd = UniqueFd(::memfd_create("released_test", MFD_CLOEXEC));
    v1::AllocateResponse reply;
    ASSERT_TRUE(reg_.Add(kA, {b}, CpuAccess::kReadWrite, no_quota, &reply).ok());
    ASSERT_TRUE(reg_.Release(kA, {b->id}).ok());
  }
  uint64_t charged = 0;
  ASSERT_TRUE(reg_.CheckRoom(kA, 1, "app/1", [&](uint64_t buffers, uint64_t) {
    charged = buffers;
    return absl::OkStatus();
  }).ok());
  EXPECT_LT(charged, 1000u) << "2000 released, nobody holds any";
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
}

TEST_F(ReleasedMemoryTest, HallocdsOwnLimitBindsEveryoneAndCountsWhatIsKept) {
  // Each buffer was an fd in hallocd: its limit stops every session, even
  // without quotas, and released memory still in use counts until gone.
  auto no_quota = [](uint64_t, uint64_t) { return absl::OkStatus(); };
  Identity other;
  other.uid = 2;
  reg_.Join(kB, other);
  reg_.SetMaxBuffers(2);
  EXPECT_EQ(Stats().max_buffers(), 2u);
  UniqueFd kept;
  const uint64_t first = Add(true, &kept, no_quota);
  ASSERT_NE(first, 0u) << last_;
  ASSERT_NE(Add(true, nullptr, no_quota), 0u) << last_;
  EXPECT_EQ(Add(true, nullptr, no_quota, kB), 0u) << "another uid, same hallocd";
  EXPECT_EQ(last_.code(), absl::StatusCode::kResourceExhausted) << last_;
  EXPECT_TRUE(absl::StrContains(last_.message(), "--max_buffers")) << last_;

  ASSERT_TRUE(reg_.Release(kA, {first}).ok());
  EXPECT_EQ(Add(true, nullptr, no_quota, kB), 0u) << "the kept fd still holds one";
  EXPECT_TRUE(absl::StrContains(last_.message(), "1 released")) << last_;
  kept.reset();
  EXPECT_NE(Add(true, nullptr, no_quota, kB), 0u) << "gone with its fd: " << last_;

  reg_.SetMaxBuffers(0);
  EXPECT_NE(Add(true, nullptr, no_quota, kB), 0u) << "0: no limit: " << last_;
}

// A buffer's read view (ReadView) is opened once and kept while the buffer
// lives, an fd in hallocd's limit like a buffer; a buffer released meanwhile
// gets a view of its own, kept by no one.
TEST_F(ReleasedMemoryTest, AReadViewIsOpenedOnceAndCountsInHallocdsLimit) {
  auto no_quota = [](uint64_t, uint64_t) { return absl::OkStatus(); };
  reg_.SetMaxBuffers(2);
  int opens = 0;
  // An import's view of `record`, as the allocator opens one.
  auto opener = [&opens](const BufferRecord& record) {
    return [&opens, &record]() -> absl::StatusOr<UniqueFd> {
      ++opens;
      UniqueFd fd(
          ::open(absl::StrCat("/proc/self/fd/", record.fd.get()).c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) return absl::InternalError("open");
      return fd;
    };
  };
  Added added = AddPage(reg_, kA, 1, no_quota, /*charge_until_gone=*/false);
  ASSERT_TRUE(added.status.ok()) << added.status;
  // Kept, as an import in flight keeps it.
  const std::shared_ptr<const BufferRecord> record = added.record.lock();
  absl::StatusOr<UniqueFd> first = reg_.ReadView(*record, opener(*record));
  absl::StatusOr<UniqueFd> second = reg_.ReadView(*record, opener(*record));
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  EXPECT_EQ(opens, 1);
  EXPECT_EQ(Stats().read_views(), 1u);
  ASSERT_EQ(::lseek(first->get(), 7, SEEK_SET), 7);
  EXPECT_EQ(::lseek(second->get(), 0, SEEK_CUR), 7) << "dups of one open file";

  EXPECT_EQ(Add(false, nullptr, no_quota), 0u) << "a buffer and its view fill a limit of 2";
  EXPECT_EQ(last_.code(), absl::StatusCode::kResourceExhausted) << last_;
  EXPECT_TRUE(absl::StrContains(last_.message(), "1 read-only views")) << last_;

  ASSERT_TRUE(reg_.Release(kA, {added.id}).ok());
  Added next = AddPage(reg_, kA, 1, no_quota, /*charge_until_gone=*/false);
  ASSERT_TRUE(next.status.ok()) << "the view went with its buffer: " << next.status;
  EXPECT_EQ(Stats().read_views(), 0u);
  // A buffer released before its first read view (during the import that
  // asks for it) gets a view of its own, which counts nowhere.
  const std::shared_ptr<const BufferRecord> released = next.record.lock();
  ASSERT_TRUE(reg_.Release(kA, {next.id}).ok());
  absl::StatusOr<UniqueFd> own = reg_.ReadView(*released, opener(*released));
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(opens, 2);
  EXPECT_FALSE(released->read_view) << "kept by no one";
  EXPECT_NE(Add(false, nullptr, no_quota), 0u) << last_;
  EXPECT_NE(Add(false, nullptr, no_quota), 0u) << last_;

  // hallocd's limit full (three buffers): a first read view is not
  // refused (the buffer's room check passed without it, an import takes
  // none) but kept by no one, each delivery its own.
  reg_.SetMaxBuffers(3);
  Added third = AddPage(reg_, kA, 1, no_quota, false);
  ASSERT_TRUE(third.status.ok()) << third.status;
  const std::shared_ptr<const BufferRecord> unkept = third.record.lock();
  const int before = opens;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<UniqueFd> view = reg_.ReadView(*unkept, opener(*unkept));
    ASSERT_TRUE(view.ok()) << view.status();
  }
  EXPECT_EQ(opens, before + 2);
  EXPECT_FALSE(unkept->read_view) << "no room to keep it";
}

TEST_F(ReleasedMemoryTest, RoomCheckedIsReservedUntilAddTakesItOrItIsDropped) {
  // Calls that passed CheckRoom and are still making their memory count
  // too: else each of many racing calls could open its fds past the limit.
  auto no_quota = [](uint64_t, uint64_t) { return absl::OkStatus(); };
  reg_.SetMaxBuffers(3);
  {
    Registry::Reservation two;
    EXPECT_TRUE(reg_.CheckRoom(kA, 2, "app/1", no_quota, true, &two).ok());
    EXPECT_EQ(two.count(), 2u);
    Registry::Reservation moved = std::move(two);
    EXPECT_EQ(reg_.CheckRoom(kA, 2, "app/1", no_quota).code(),
              absl::StatusCode::kResourceExhausted) << "two of three reserved";
    EXPECT_TRUE(reg_.CheckRoom(kA, 1, "app/1", no_quota).ok()) << "a check reserves nothing";
  }  // that call failed before Add: its room comes back
  Registry::Reservation three;
  EXPECT_TRUE(reg_.CheckRoom(kA, 3, "app/1", no_quota, true, &three).ok());
  std::vector<std::shared_ptr<BufferRecord>> fresh;
  for (int i = 0; i < 3; ++i) {
    fresh.push_back(std::make_shared<BufferRecord>());
    fresh.back()->size = kPage;
    fresh.back()->charged_to = "app/1";
  }
  v1::AllocateResponse reply;
  ASSERT_TRUE(reg_.Add(kA, fresh, CpuAccess::kReadWrite, no_quota, &reply, std::move(three)).ok())
      << "its own reservation does not stand in its way";
  EXPECT_EQ(reg_.CheckRoom(kA, 1, "app/1", no_quota).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(reg_.Release(kA, {reply.buffers(0).id()}).ok());
  EXPECT_TRUE(reg_.CheckRoom(kA, 1, "app/1", no_quota).ok())
      << "taken by Add, not given back twice: one released, one free";
  EXPECT_EQ(reg_.CheckRoom(kA, 2, "app/1", no_quota).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(ReleasedPolledMemoryTest, ARefusalAsksAboutTheRefusedUidsMemoryFirst) {
  // Memory whose end raises no event (a dma-buf): the follower asks. Here
  // it answers what the test says (per fd); a quota refusal must ask
  // again, at once, and only about the refused uid's memory; a refusal by
  // hallocd's own limit about anyone's.
  // By inode: fd numbers are reused.
  absl::Mutex mu;
  absl::flat_hash_map<ino_t, int> last;   // answer (0 unless set)
  absl::flat_hash_map<ino_t, int> asked;  // times asked
  auto inode = [](int fd) {
    struct stat st {};
    ::fstat(fd, &st);
    return st.st_ino;
  };
  auto poll = std::make_shared<LastReferencePoll>(
      [&](int fd) {
        absl::MutexLock lock(&mu);
        ++asked[inode(fd)];
        return last[inode(fd)];
      },
      /*on_a_thread=*/false);
  Registry reg("dmabuf", /*dma_bufs=*/true, 8, poll);
  JoinTwoUids(reg);
  auto times = [&](ino_t ino) {
    absl::MutexLock lock(&mu);
    return asked[ino];
  };
  const Added one = AddPage(reg, kA, 1, OneBuffer);
  const Added two = AddPage(reg, kB, 2, OneBuffer);
  ASSERT_NE(one.id, 0u) << one.status;
  ASSERT_NE(two.id, 0u) << two.status;
  const ino_t ino1 = one.ino, ino2 = two.ino;
  ASSERT_TRUE(reg.Release(kA, {one.id}).ok());
  ASSERT_TRUE(reg.Release(kB, {two.id}).ok());
  reg.FlushReaper();  // each asked once, at release
  EXPECT_EQ(times(ino1), 1);
  EXPECT_EQ(times(ino2), 1);
  const int before2 = times(ino2);
  EXPECT_EQ(AddPage(reg, kA, 1, OneBuffer).id, 0u) << "someone else still has uid 1's";
  EXPECT_EQ(times(ino2), before2) << "uid 2's was not uid 1's refusal's business";
  {
    absl::MutexLock lock(&mu);
    last[ino1] = 1;
  }
  EXPECT_NE(AddPage(reg, kA, 1, OneBuffer).id, 0u) << "the refusal asked again and saw it go";

  // hallocd full (two live or held, one of them uid 2's released one):
  // uid 2's refusal asks about its own first (a refusal by hallocd's
  // limit asking about anyone's: the next test).
  reg.SetMaxBuffers(2);
  {
    absl::MutexLock lock(&mu);
    last[ino2] = 1;
  }
  EXPECT_NE(AddPage(reg, kB, 2, OneBuffer).id, 0u) << "uid 2's own, gone: asked at uid 2's refusal";
  EXPECT_EQ(AddPage(reg, kB, 2, OneBuffer).id, 0u) << "full: uid 1's live one and uid 2's";
  EXPECT_EQ(poll->following(), 0u);
}

// Released memory is asked about by the uid it is charged to: a
// subordinate uid's (a rootless container's) is its user's. Before, it was
// followed under the uid that asked for it, so its user's refusal asked
// about nothing and was refused for memory already gone (until the
// periodic pass, backed off to 30 s, came round).
TEST(ReleasedPolledMemoryTest, ARefusalAsksAboutMemoryByTheUidItIsChargedTo) {
  std::atomic<int> last{0};
  auto poll = std::make_shared<LastReferencePoll>([&](int) { return last.load(); },
                                                  /*on_a_thread=*/false);
  Registry reg("dmabuf", /*dma_bufs=*/true, 8, poll);
  Identity sub;
  sub.uid = 100005;
  sub.account_uid = 1000;
  reg.Join(kA, sub);
  const Added first = AddPage(reg, kA, 100005, OneBuffer, true, nullptr, 1000);
  ASSERT_NE(first.id, 0u) << first.status;
  ASSERT_TRUE(reg.Release(kA, {first.id}).ok());
  reg.FlushReaper();
  EXPECT_EQ(poll->following(), 1u);
  EXPECT_EQ(AddPage(reg, kA, 100005, OneBuffer, true, nullptr, 1000).id, 0u)
      << "still held somewhere: uid 1000 owns one";
  last = 1;  // gone now
  const Added again = AddPage(reg, kA, 100005, OneBuffer, true, nullptr, 1000);
  EXPECT_NE(again.id, 0u) << "uid 1000's refusal asked about uid 1000's memory: " << again.status;
}

TEST(ReleasedPolledMemoryTest, ARefusalOfHallocdsLimitAsksAboutAnyonesMemory) {
  std::atomic<int> last{0};
  auto poll = std::make_shared<LastReferencePoll>([&](int) { return last.load(); },
                                                  /*on_a_thread=*/false);
  Registry reg("dmabuf", /*dma_bufs=*/true, 8, poll);
  JoinTwoUids(reg);
  reg.SetMaxBuffers(1);
  auto no_quota = [](uint64_t, uint64_t) { return absl::OkStatus(); };
  const Added mine = AddPage(reg, kA, 1, no_quota);
  ASSERT_NE(mine.id, 0u) << mine.status;
  ASSERT_TRUE(reg.Release(kA, {mine.id}).ok());
  reg.FlushReaper();
  EXPECT_EQ(poll->following(), 1u);
  EXPECT_EQ(reg.CheckRoom(kB, 1, "app/2", no_quota, /*may_wait=*/true).code(),
            absl::StatusCode::kResourceExhausted)
      << "uid 1's released buffer, still held somewhere, fills hallocd";
  last = 1;
  EXPECT_TRUE(reg.CheckRoom(kB, 1, "app/2", no_quota, /*may_wait=*/true).ok())
      << "uid 2's refusal by hallocd's limit asked about uid 1's memory";
}

TEST_F(ReleasedMemoryTest, LeavingReleasesButKeepsTheChargeOfWhatIsKept) {
  UniqueFd kept;
  ASSERT_NE(Add(true, &kept), 0u) << last_;
  reg_.Leave(kA);
  Identity id;
  id.uid = 1;
  reg_.Join(kA + 1, id);
  v1::StatsResponse s = Stats();
  EXPECT_EQ(s.released_held_buffers(), 1u);
  kept.reset();
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
  EXPECT_EQ(Stats().clients_size(), 0) << "a row for a client and uid that owns nothing";
}

}  // namespace
}  // namespace halloc
