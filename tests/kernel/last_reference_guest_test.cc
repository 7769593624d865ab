// LastReferenceWatch (service/util/last_reference.h) on the guest's kernel,
// Debian's 6.1: hallocd keeps a released memfd buffer charged until the
// watch reports its last file gone, so that has to hold on the oldest
// kernel we run on too. A dma-buf's end is not reported this way (its
// inode keeps a link), which is why the dma-buf backends are polled
// instead: their fdinfo's count (dmabuf_refs.h), checked here too.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "service/backend/dmabuf_refs.h"
#include "service/util/last_reference.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

TEST(LastReferenceGuestTest, AMemfdIsReportedAtItsLastFileAnywhere) {
  halloc::LastReferenceWatch watch;
  int fd = ::memfd_create("last_reference_guest", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  void* map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // holds its copy of the fd until told
    char c;
    ::close(go[1]);
    (void)!::read(go[0], &c, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  watch.Follow(halloc::UniqueFd(::dup(fd)), 1);  // hallocd's own fd
  ::close(fd);
  EXPECT_THAT(watch.TakeGone(), IsEmpty()) << "the mapping and the child hold it";
  ASSERT_EQ(::munmap(map, 4096), 0);
  EXPECT_THAT(watch.TakeGone(), IsEmpty()) << "the child holds it";
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_THAT(watch.TakeGone(), UnorderedElementsAre(1u));
  EXPECT_EQ(watch.unwatched(), 0u);
}

class LastReferenceDmaBufTest : public HallocTest {};

TEST_F(LastReferenceDmaBufTest, ADmaBufsEndIsNotReported) {
  halloc::LastReferenceWatch watch;
  UniqueFd fd = Alloc(Heap::kSystem, PageAlign(1));
  ASSERT_TRUE(fd.valid());
  watch.Follow(halloc::UniqueFd(::dup(fd.get())), 2);
  ASSERT_EQ(watch.unwatched(), 0u) << "the watch itself is taken";
  fd.reset();
  EXPECT_THAT(watch.TakeGone(), IsEmpty())
      << "if 6.1 reported a dma-buf's end, the dma-buf backends could be "
         "watched too";
}

TEST_F(LastReferenceDmaBufTest, ItsFdinfoCountsEveryFdMappingAndHolderElsewhere) {
  UniqueFd fd = Alloc(Heap::kSystem, PageAlign(1));
  ASSERT_TRUE(fd.valid());
  auto refs = [&] {
    absl::StatusOr<uint64_t> n = halloc::DmaBufReferences(fd.get());
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(0);
  };
  EXPECT_EQ(refs(), 1u);
  EXPECT_EQ(halloc::DmaBufIsLastReference(fd.get()), 1);
  int copy = ::dup(fd.get());
  EXPECT_EQ(refs(), 2u) << "a dup is another reference to the file";
  void* map = ::mmap(nullptr, PageAlign(1), PROT_READ, MAP_SHARED, copy, 0);
  ASSERT_NE(map, MAP_FAILED);
  ::close(copy);
  EXPECT_EQ(refs(), 2u) << "a mapping holds the file";
  EXPECT_EQ(halloc::DmaBufIsLastReference(fd.get()), 0);
  ASSERT_EQ(::munmap(map, PageAlign(1)), 0);
  EXPECT_EQ(refs(), 1u);
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // holds its inherited fd until told
    char c;
    ::close(go[1]);
    (void)!::read(go[0], &c, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  EXPECT_EQ(refs(), 2u) << "another process's fd";
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(refs(), 1u);
}

// What fdinfo cannot see: an O_PATH open through /proc holds the dma-buf's
// dentry, and so the dma-buf and its pages, without a reference to its
// file. The module counts both (HALLOC_IOCTL_INFO file_refs, path_refs).
TEST_F(LastReferenceDmaBufTest, AnOPathOpenHoldsTheDmaBufAndOnlyTheModuleSeesIt) {
  UniqueFd fd = Alloc(Heap::kSystem, PageAlign(1));
  ASSERT_TRUE(fd.valid());
  halloc_buffer_info info = InfoOf(fd.get());
  EXPECT_EQ(info.file_refs, 1u);
  EXPECT_EQ(info.path_refs, 1u);
  const int copy = ::dup(fd.get());
  EXPECT_EQ(InfoOf(fd.get()).file_refs, 2u);
  ::close(copy);
  char path[40];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd.get());
  const int pinned = ::open(path, O_PATH | O_CLOEXEC);
  ASSERT_GE(pinned, 0) << std::strerror(errno);
  info = InfoOf(fd.get());
  EXPECT_EQ(info.file_refs, 1u) << "an O_PATH file is not a reference to the file";
  EXPECT_EQ(info.path_refs, 2u);
  EXPECT_EQ(halloc::DmaBufReferences(fd.get()).value_or(0), 1u)
      << "fdinfo's count is blind to it";
  const uint64_t id = info.id;
  fd.reset();
  EXPECT_TRUE(BufferListed(id)) << "the O_PATH open alone keeps the buffer";
  ::close(pinned);
  EXPECT_FALSE(BufferListed(id));
}

}  // namespace
}  // namespace halloc_test
