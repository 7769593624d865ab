// mmap() and the generic dma-buf file operations on halloc buffers.
#include <errno.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <climits>
#include <cstring>
#include <fstream>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

class MmapTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    page_ = PageAlign(1);
    size_ = 4 * page_;
    fd_ = Alloc(Heap::kSystem, size_);
    ASSERT_TRUE(fd_.valid());
  }

  size_t page_ = 0;
  size_t size_ = 0;
  UniqueFd fd_;
};

TEST_F(MmapTest, BoundsChecked) {
  Mapping whole = Map(fd_.get(), size_);
  ASSERT_TRUE(whole.valid()) << strerror(errno);
  for (size_t p = 0; p < 4; ++p) memset(whole.data() + p * page_, int(p + 1), page_);

  EXPECT_FALSE(Map(fd_.get(), size_ + page_).valid());
  EXPECT_EQ(errno, EINVAL) << "longer than the buffer";
  EXPECT_FALSE(Map(fd_.get(), page_, PROT_READ, MAP_SHARED, off_t(size_)).valid());
  EXPECT_EQ(errno, EINVAL) << "offset at the end";
  EXPECT_FALSE(Map(fd_.get(), 2 * page_, PROT_READ, MAP_SHARED, off_t(3 * page_)).valid());
  EXPECT_EQ(errno, EINVAL) << "runs past the end";

  // A window at an offset sees the right page.
  Mapping window = Map(fd_.get(), page_, PROT_READ, MAP_SHARED, off_t(2 * page_));
  ASSERT_TRUE(window.valid()) << strerror(errno);
  EXPECT_TRUE(AllBytesAre(window.data(), page_, 3));
}

TEST_F(MmapTest, OffsetOverflowRefused) {
  for (off_t off : {off_t(LLONG_MAX) & ~off_t(page_ - 1), off_t(-page_),
                    off_t(1) << 52}) {
    SCOPED_TRACE("offset " + std::to_string(off));
    Mapping m = Map(fd_.get(), 2 * page_, PROT_READ, MAP_SHARED, off);
    EXPECT_FALSE(m.valid());
    EXPECT_TRUE(errno == EINVAL || errno == EOVERFLOW) << strerror(errno);
  }
}

TEST_F(MmapTest, PrivateMappingRefused) {
  EXPECT_FALSE(Map(fd_.get(), size_, PROT_READ, MAP_PRIVATE).valid());
  EXPECT_EQ(errno, EINVAL);
  EXPECT_FALSE(Map(fd_.get(), size_, PROT_READ | PROT_WRITE, MAP_PRIVATE).valid());
  EXPECT_EQ(errno, EINVAL);
}

TEST_F(MmapTest, MremapCannotGrow) {
  Mapping m = Map(fd_.get(), 2 * page_);
  ASSERT_TRUE(m.valid()) << strerror(errno);
  void* grown = mremap(m.data(), 2 * page_, size_, MREMAP_MAYMOVE);
  EXPECT_EQ(grown, MAP_FAILED);
  EXPECT_EQ(errno, EFAULT);
  grown = mremap(m.data(), 2 * page_, 3 * page_, 0);
  EXPECT_EQ(grown, MAP_FAILED);
  // Shrinking is fine.
  void* shrunk = mremap(m.data(), 2 * page_, page_, 0);
  EXPECT_EQ(shrunk, m.data());
  munmap(m.data() + page_, page_);  // harmless if already gone
}

// Touching beyond the end of a mapping kills the toucher with a signal; the
// kernel must not oops (tools/kernel-test.sh checks the guest log).
TEST_F(MmapTest, TouchPastEndIsASignalNotAnOops) {
  const size_t size = size_;
  const int fd = fd_.get();
  int status = RunInChild([fd, size] {
    // Reserve a hole after the mapping so that nothing else lives there.
    void* hole = mmap(nullptr, size + 65536, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (hole == MAP_FAILED) _exit(10);
    munmap(static_cast<char*>(hole) + size, 65536);
    void* p = mmap(hole, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                   fd, 0);
    if (p == MAP_FAILED) _exit(11);
    volatile uint8_t* b = static_cast<uint8_t*>(p);
    b[size - 1] = 1;  // last byte: fine
    (void)b[size];    // one past: signal
    _exit(12);
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited " << WEXITSTATUS(status);
  EXPECT_TRUE(WTERMSIG(status) == SIGBUS || WTERMSIG(status) == SIGSEGV)
      << strsignal(WTERMSIG(status));
}

TEST_F(MmapTest, SyncFlagsValidated) {
  EXPECT_EQ(Sync(fd_.get(), 0), -EINVAL) << "neither read nor write";
  EXPECT_EQ(Sync(fd_.get(), DMA_BUF_SYNC_END), -EINVAL);
  EXPECT_EQ(Sync(fd_.get(), 1ull << 3), -EINVAL);
  EXPECT_EQ(Sync(fd_.get(), DMA_BUF_SYNC_RW | (1ull << 8)), -EINVAL);
  EXPECT_EQ(Sync(fd_.get(), ~0ull), -EINVAL);
  for (uint64_t rw : {uint64_t(DMA_BUF_SYNC_READ), uint64_t(DMA_BUF_SYNC_WRITE),
                      uint64_t(DMA_BUF_SYNC_RW)}) {
    EXPECT_EQ(Sync(fd_.get(), DMA_BUF_SYNC_START | rw), 0);
    EXPECT_EQ(Sync(fd_.get(), DMA_BUF_SYNC_END | rw), 0);
  }
}

TEST_F(MmapTest, SetName) {
  const char name[] = "camera-frame-7";
  ASSERT_EQ(Ioctl(fd_.get(), DMA_BUF_SET_NAME, const_cast<char*>(name)), 0);
  EXPECT_STREQ(InfoOf(fd_.get()).name, name);
  std::string fdinfo = ReadFile("/proc/self/fdinfo/" + std::to_string(fd_.get()));
  EXPECT_NE(fdinfo.find(name), std::string::npos) << fdinfo;
  EXPECT_NE(fdinfo.find(HALLOC_HEAP_SYSTEM), std::string::npos) << fdinfo;

  std::string too_long(64, 'x');
  EXPECT_EQ(Ioctl(fd_.get(), DMA_BUF_SET_NAME, too_long.data()), -EINVAL);
  EXPECT_EQ(Ioctl(fd_.get(), DMA_BUF_SET_NAME, reinterpret_cast<void*>(8)),
            -EFAULT);
}

TEST_F(MmapTest, Lseek) {
  EXPECT_EQ(lseek(fd_.get(), 0, SEEK_END), off_t(size_));
  EXPECT_EQ(lseek(fd_.get(), 0, SEEK_SET), 0);
  EXPECT_EQ(lseek(fd_.get(), 1, SEEK_SET), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(lseek(fd_.get(), 0, SEEK_CUR), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_F(MmapTest, MmapCountedAndSharedBetweenMappings) {
  EXPECT_EQ(InfoOf(fd_.get()).mmaps, 0u);
  {
    Mapping a = Map(fd_.get(), size_);
    Mapping b = Map(fd_.get(), size_);
    ASSERT_TRUE(a.valid() && b.valid()) << strerror(errno);
    EXPECT_EQ(InfoOf(fd_.get()).mmaps, 2u);
    a.data()[size_ - 1] = 0x5a;
    EXPECT_EQ(b.data()[size_ - 1], 0x5a);
    // Splitting a mapping makes two VMAs.
    ASSERT_EQ(mprotect(a.data(), page_, PROT_READ), 0);
    EXPECT_EQ(InfoOf(fd_.get()).mmaps, 3u);
  }
  EXPECT_EQ(InfoOf(fd_.get()).mmaps, 0u);
  // A mapping outlives its fd.
  Mapping m = Map(fd_.get(), size_);
  ASSERT_TRUE(m.valid());
  m.data()[0] = 0x11;
  fd_.reset();
  EXPECT_EQ(m.data()[0], 0x11);
  m.data()[size_ - 1] = 0x22;
}

}  // namespace
}  // namespace halloc_test
