#include "service/util/last_reference.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include "clients/cpp/halloc/base/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

UniqueFd Memfd(size_t size = 4096) {
  UniqueFd fd(::memfd_create("last_reference_test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.is_valid());
  EXPECT_EQ(::ftruncate(fd.get(), size), 0);
  return fd;
}

// hallocd's own fd for the memory `fd` is (the watch takes it); the test
// keeps `fd` as a client would.
UniqueFd Own(const UniqueFd& fd) { return UniqueFd(::dup(fd.get())); }

TEST(LastReferenceWatchTest, ReportsGoneAtTheLastCloseOnly) {
  LastReferenceWatch watch;
  EXPECT_EQ(watch.instances(), 1u) << "made up front: no fd appears later";
  UniqueFd fd = Memfd();
  UniqueFd other(::dup(fd.get()));
  watch.Follow(Own(fd), 7);
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty()) << "a dup still holds it";
  EXPECT_EQ(watch.following(), 1u);
  other.reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(7u));
  EXPECT_EQ(watch.following(), 0u);
  EXPECT_THAT(watch.TakeGone(), IsEmpty()) << "reported once";
}

TEST(LastReferenceWatchTest, AMappingKeepsItUntilUnmapped) {
  LastReferenceWatch watch;
  UniqueFd fd = Memfd();
  void* map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED);
  watch.Follow(Own(fd), 1);
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty());
  ASSERT_EQ(::munmap(map, 4096), 0);
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(1u));
}

TEST(LastReferenceWatchTest, AReopenedFileKeepsIt) {
  // A view (or a client) may reopen the memfd through /proc: a new struct
  // file for the same memory.
  LastReferenceWatch watch;
  UniqueFd fd = Memfd();
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd.get());
  UniqueFd reopened(::open(path, O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(reopened.is_valid());
  watch.Follow(Own(fd), 3);
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty());
  reopened.reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(3u));
}

TEST(LastReferenceWatchTest, AnOPathOpenKeepsIt) {
  // An O_PATH open holds the dentry, not the file: the memory (and so
  // the charge) stays while it is open, and the event comes only after.
  LastReferenceWatch watch;
  UniqueFd fd = Memfd();
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd.get());
  UniqueFd pinned(::open(path, O_PATH | O_CLOEXEC));
  ASSERT_TRUE(pinned.is_valid());
  watch.Follow(Own(fd), 4);
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty());
  pinned.reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(4u));
}

TEST(LastReferenceWatchTest, AnotherProcessHoldingItKeepsIt) {
  LastReferenceWatch watch;
  UniqueFd fd = Memfd();
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Holds its inherited copy until the parent says.
    char c;
    ::close(go[1]);
    (void)!::read(go[0], &c, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  watch.Follow(Own(fd), 5);
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty());
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(5u));
}

TEST(LastReferenceWatchTest, FullInstancesSpillIntoNewOnesAndReuseFreedRoom) {
  // Two watches per instance: five followed at once (of five groups, each
  // within its share) need three instances.
  LastReferenceWatch watch(2);
  std::vector<UniqueFd> held;
  for (uint64_t t = 0; t < 5; ++t) {
    UniqueFd fd = Memfd();
    watch.Follow(Own(fd), t, /*group=*/t);
    held.push_back(std::move(fd));
  }
  EXPECT_EQ(watch.following(), 5u);
  EXPECT_EQ(watch.unwatched(), 0u);
  EXPECT_EQ(watch.instances(), 3u);
  held.clear();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(0u, 1u, 2u, 3u, 4u));
  EXPECT_EQ(watch.instances(), 1u) << "the burst's extra fds are closed again";
  // Room freed by the IN_IGNORED events is used again: many more rounds
  // than kMaxInstances × 2 watches, none refused.
  for (uint64_t t = 100; t < 200; ++t) {
    UniqueFd fd = Memfd();
    watch.Follow(Own(fd), t);
    fd.reset();
    EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(t));
  }
  EXPECT_EQ(watch.unwatched(), 0u);
}

TEST(LastReferenceWatchTest, WithNoRoomLeftTheMemoryIsHeldUntilThereIs) {
  // Running out of watches must not let memory escape its charge: what
  // cannot be watched yet is held (an fd) and watched once room frees.
  LastReferenceWatch watch(1);
  std::vector<UniqueFd> held;
  for (uint64_t t = 0; t < LastReferenceWatch::kMaxInstances; ++t) {
    UniqueFd fd = Memfd();
    watch.Follow(Own(fd), t, /*group=*/t);
    held.push_back(std::move(fd));
  }
  UniqueFd extra = Memfd();
  watch.Follow(Own(extra), 99, /*group=*/99);
  extra.reset();
  EXPECT_EQ(watch.waiting(), 1u);
  EXPECT_THAT(watch.TakeGone(), IsEmpty()) << "held by the watch itself, still charged";
  held[0].reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(0u));
  EXPECT_EQ(watch.waiting(), 0u) << "watched in the room token 0 left";
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(99u))
      << "its only other fd was closed long ago: gone with the held one";
  EXPECT_EQ(watch.unwatched(), 0u);
}

TEST(LastReferenceWatchTest, OneGroupPastItsShareWaitsAloneForItsOwnToGo) {
  // Sixteen watches in all, two per group: a group keeping many released
  // buffers cannot take the watches another group's releases need.
  LastReferenceWatch watch(1);
  ASSERT_EQ(watch.group_cap(), 2u);
  std::vector<UniqueFd> greedy;
  for (uint64_t t = 0; t < 5; ++t) {
    UniqueFd fd = Memfd();
    watch.Follow(Own(fd), t, /*group=*/1);
    greedy.push_back(std::move(fd));
  }
  EXPECT_EQ(watch.following(), 2u);
  EXPECT_EQ(watch.waiting(), 3u) << "past the share: held, still charged";
  UniqueFd other = Memfd();
  watch.Follow(Own(other), 100, /*group=*/2);
  EXPECT_EQ(watch.following(), 3u) << "another group is watched at once";
  other.reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(100u));
  // The greedy group's first goes: its oldest waiting one takes the room.
  greedy[0].reset();
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(0u));
  EXPECT_EQ(watch.waiting(), 2u);
  greedy.clear();
  std::vector<uint64_t> gone;
  for (int i = 0; i < 5 && gone.size() < 4; ++i) {
    for (uint64_t t : watch.TakeGone()) gone.push_back(t);
  }
  EXPECT_THAT(gone, UnorderedElementsAre(1u, 2u, 3u, 4u));
  EXPECT_EQ(watch.waiting(), 0u);
  EXPECT_EQ(watch.unwatched(), 0u);
}

TEST(LastReferenceWatchTest, TakesAtMostHalfOfTheUsersWatches) {
  // hallocd's user (root) shares max_user_watches with systemd, udev and
  // the rest: the watch never plans on more than half of it.
  std::ifstream in("/proc/sys/fs/inotify/max_user_watches");
  size_t user = 0;
  ASSERT_TRUE(in >> user) << "no /proc/sys/fs/inotify/max_user_watches";
  LastReferenceWatch watch;
  EXPECT_LE(watch.max_watches(), user / 2);
  EXPECT_LE(watch.max_watches(), LastReferenceWatch::kMaxInstances * 8191);
  EXPECT_EQ(watch.group_cap(), std::max<size_t>(1, watch.max_watches() / 8));
}

TEST(LastReferenceWatchTest, PastTheOverallCapMemoryIsKeptNotLetGo) {
  LastReferenceWatch watch(/*watches_per_instance=*/100, /*max_watches=*/3);
  std::vector<UniqueFd> held;
  for (uint64_t t = 0; t < 4; ++t) {
    UniqueFd fd = Memfd();
    watch.Follow(Own(fd), t, /*group=*/t);
    held.push_back(std::move(fd));
  }
  EXPECT_EQ(watch.following(), 3u);
  EXPECT_EQ(watch.waiting(), 1u);
  held.clear();
  std::vector<uint64_t> gone;
  for (int i = 0; i < 4 && gone.size() < 4; ++i) {
    for (uint64_t t : watch.TakeGone()) gone.push_back(t);
  }
  EXPECT_THAT(gone, UnorderedElementsAre(0u, 1u, 2u, 3u));
  EXPECT_EQ(watch.unwatched(), 0u);
}

// A holder that owns the file as hallocd does (hallocd's own uid, or a
// user namespace mapping it) makes it unreadable (fchmod 0) before the
// release, so that the watch is refused: the memory was reported gone at
// once (its charge returned while the holder kept it: 768 MiB mapped
// against a 64 MiB quota). The owner, as hallocd, makes it readable again
// and watches it. Run as a uid the file mode binds (root reads it anyway):
// in a child, as uid 65534 when the test runs as root.
TEST(LastReferenceWatchTest, AFileMadeUnreadableByItsOwnerIsWatchedAllTheSame) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::geteuid() == 0 &&
        (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0)) {
      ::_exit(10);
    }
    LastReferenceWatch watch;
    UniqueFd fd(::memfd_create("last_reference_test", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), 4096) != 0) ::_exit(11);
    if (::fchmod(fd.get(), 0) != 0) ::_exit(12);
    watch.Follow(Own(fd), 5);
    if (watch.unwatched() != 0 || !watch.TakeGone().empty()) ::_exit(1);  // let go
    if (watch.following() != 1) ::_exit(2);
    fd.reset();
    const std::vector<uint64_t> gone = watch.TakeGone();
    ::_exit(gone.size() == 1 && gone[0] == 5 ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  if (WEXITSTATUS(status) == 10) GTEST_SKIP() << "cannot switch to uid 65534 here";
  EXPECT_NE(WEXITSTATUS(status), 1) << "reported gone at once: its charge would be returned";
  EXPECT_NE(WEXITSTATUS(status), 2) << "not watched";
  EXPECT_NE(WEXITSTATUS(status), 3) << "its last close was not seen";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(LastReferenceWatchTest, AnFdThatIsNotOpenIsReportedGoneAtOnce) {
  LastReferenceWatch watch;
  watch.Follow(UniqueFd(), 4);
  EXPECT_EQ(watch.unwatched(), 1u);
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(4u));
}

}  // namespace
}  // namespace halloc
