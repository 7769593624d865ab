// DMA_HEAP_IOCTL_ALLOC on both halloc heaps: sizes, zeroing, struct-size
// compatibility, limits and every validation errno.
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

class HeapAllocTest : public HallocTest {};

TEST_F(HeapAllocTest, SizesOnBothHeaps) {
  const size_t page = PageAlign(1);
  const std::vector<size_t> sizes = {1,          page - 1,       page,
                                     page + 1,   64 * 1024 - 1,  64 * 1024,
                                     1 << 20,    (1 << 20) + page, 3 * (1 << 20) + 5,
                                     4 << 20,    16 << 20};
  for (Heap heap : {Heap::kSystem, Heap::kContig}) {
    for (size_t len : sizes) {
      if (heap == Heap::kContig &&
          len > static_cast<size_t>(ModuleParam("contig_max_kb")) * 1024)
        continue;
      SCOPED_TRACE(std::string(HeapName(heap)) + " len " + std::to_string(len));
      UniqueFd fd = Alloc(heap, len);
      ASSERT_TRUE(fd.valid());
      const size_t size = PageAlign(len);
      EXPECT_EQ(lseek(fd.get(), 0, SEEK_END), static_cast<off_t>(size));

      halloc_buffer_info info = InfoOf(fd.get());
      EXPECT_EQ(info.size, size);
      EXPECT_STREQ(info.heap, HeapName(heap));
      EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ_WRITE);
      EXPECT_EQ(info.dmabufs, 1u);
      EXPECT_EQ(info.views, 0u);
      EXPECT_GE(info.segments, 1u);
      if (heap == Heap::kContig) {
        EXPECT_EQ(info.segments, 1u);
        if (ModuleParamText("contig_dma32") == "Y") {
          EXPECT_TRUE(info.flags & HALLOC_INFO_BELOW_4G);
        }
      }

      Mapping m = Map(fd.get(), size);
      ASSERT_TRUE(m.valid()) << strerror(errno);
      EXPECT_TRUE(AllBytesAre(m.data(), size, 0));
      ASSERT_EQ(Sync(fd.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW), 0);
      for (size_t i = 0; i < size; i += 512) m.data()[i] = uint8_t(i / 512 + 1);
      ASSERT_EQ(Sync(fd.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW), 0);
      for (size_t i = 0; i < size; i += 512)
        ASSERT_EQ(m.data()[i], uint8_t(i / 512 + 1)) << "offset " << i;
    }
  }
}

TEST_F(HeapAllocTest, ZeroedAfterPreviousUserFilledIt) {
  for (Heap heap : {Heap::kSystem, Heap::kContig}) {
    SCOPED_TRACE(HeapName(heap));
    const size_t size = 2 << 20;
    for (int round = 0; round < 4; ++round) {
      SCOPED_TRACE("round " + std::to_string(round));
      UniqueFd fd = Alloc(heap, size);
      ASSERT_TRUE(fd.valid());
      Mapping m = Map(fd.get(), size);
      ASSERT_TRUE(m.valid()) << strerror(errno);
      ASSERT_TRUE(AllBytesAre(m.data(), size, 0));
      memset(m.data(), 0xa5, size);  // the next round must not see this
    }
  }
}

TEST_F(HeapAllocTest, PoolKeepsFreedPagesAndShrinkerDrainsIt) {
  const size_t size = 4 << 20;
  const long pages = long(size / PageAlign(1));
  ASSERT_GE(ModuleParam("pool_max_mb"), 8);
  Alloc(Heap::kSystem, size).reset();  // freed into the pool
  const long before = PoolPages();
  ASSERT_GE(before, pages);
  {
    // The next allocation is served from the pool.
    UniqueFd fd = Alloc(Heap::kSystem, size);
    ASSERT_TRUE(fd.valid());
    EXPECT_LE(PoolPages(), before - pages);
  }
  // Memory pressure runs the pool's shrinker; drop_caches runs them all.
  ASSERT_TRUE(WriteFile("/proc/sys/vm/drop_caches", "2"));
  EXPECT_EQ(PoolPages(), 0);
}

TEST_F(HeapAllocTest, TotalCapFromModuleParameter) {
  ScopedParam cap("max_total_mb", "8");
  ASSERT_TRUE(cap.ok());
  UniqueFd a = Alloc(Heap::kSystem, 6 << 20);
  ASSERT_TRUE(a.valid());
  EXPECT_EQ(HeapAlloc(system_.get(), 4 << 20), -ENOMEM);
  EXPECT_EQ(HeapAlloc(contig_.get(), 4 << 20), -ENOMEM);
  UniqueFd b = Alloc(Heap::kContig, 2 << 20);
  EXPECT_TRUE(b.valid());
  a.reset();
  UniqueFd c = Alloc(Heap::kSystem, 4 << 20);
  EXPECT_TRUE(c.valid());
}

// Below 4 GiB (ZONE_DMA32) has a cap of its own, dma32_max_mb: halloc-contig
// takes its pages there, and within max_total_mb alone a user could empty
// the zone for every 32-bit DMA user of the machine. Loaded without it, it
// is a quarter of the zone; halloc-system's pages (no 32-bit device
// attached) are not charged to it, nor are halloc-contig's with
// contig_dma32=0.
TEST_F(HeapAllocTest, BelowFourGibHasACapOfItsOwn) {
  const long by_default = ModuleParam("dma32_max_mb");
  EXPECT_GT(by_default, 0) << "a quarter of ZONE_DMA32 (the guest has 1 GiB below 4 GiB)";
  EXPECT_LE(by_default, 256);
  ScopedParam cap("dma32_max_mb", "8");
  ASSERT_TRUE(cap.ok());
  UniqueFd a = Alloc(Heap::kContig, 4 << 20);
  UniqueFd b = Alloc(Heap::kContig, 4 << 20);
  ASSERT_TRUE(a.valid() && b.valid());
  EXPECT_NE(InfoOf(a.get()).flags & HALLOC_INFO_BELOW_4G, 0u);
  EXPECT_EQ(HeapAlloc(contig_.get(), 4096), -ENOMEM) << "8 MiB below 4 GiB are taken";
  UniqueFd scattered = Alloc(Heap::kSystem, 4 << 20);
  EXPECT_TRUE(scattered.valid()) << "halloc-system is not charged below 4 GiB";
  EXPECT_NE(ReadFile("/sys/kernel/debug/halloc/buffers").find("below 4 GiB: 8388608 bytes"),
            std::string::npos)
      << ReadFile("/sys/kernel/debug/halloc/buffers");
  {
    ScopedParam anywhere("contig_dma32", "N");
    ASSERT_TRUE(anywhere.ok());
    UniqueFd high = Alloc(Heap::kContig, 4 << 20);
    EXPECT_TRUE(high.valid()) << "halloc-contig anywhere is not charged below 4 GiB";
  }
  a.reset();  // gives its 4 MiB back
  UniqueFd c = Alloc(Heap::kContig, 4 << 20);
  EXPECT_TRUE(c.valid());
  EXPECT_EQ(HeapAlloc(contig_.get(), 4096), -ENOMEM);
}

TEST_F(HeapAllocTest, LoadedWithoutACapItTakesHalfOfRam) {
  // tools/kernel-test.sh loads the module without max_total_mb; the pages
  // are charged to no memory cgroup, so by default no user allowed on the
  // heaps may take more than half of the machine.
  const long kib = static_cast<long>(ProcField("/proc/meminfo", "MemTotal"));
  ASSERT_GT(kib, 0) << ReadFile("/proc/meminfo");
  EXPECT_EQ(ModuleParamText("max_total_mb"), std::to_string(kib / 2048));
  // More than that in all is refused (buffers of max_buffer_mb each).
  const size_t chunk = static_cast<size_t>(std::stoul(ModuleParamText("max_buffer_mb"))) << 20;
  std::vector<UniqueFd> held;
  int refused = 0;
  for (long mib = 0; mib <= kib / 2048 + static_cast<long>(chunk >> 20); mib += chunk >> 20) {
    const int fd = HeapAlloc(system_.get(), chunk);
    if (fd < 0) {
      EXPECT_EQ(fd, -ENOMEM);
      ++refused;
      break;
    }
    held.emplace_back(fd);
  }
  EXPECT_EQ(refused, 1) << held.size() << " buffers of " << (chunk >> 20) << " MiB fit";
  EXPECT_LE(held.size() * chunk, static_cast<size_t>(kib / 2048) << 20);
}

TEST_F(HeapAllocTest, FdFlags) {
  UniqueFd cloexec = Alloc(Heap::kSystem, 4096, O_RDWR | O_CLOEXEC);
  ASSERT_TRUE(cloexec.valid());
  EXPECT_TRUE(fcntl(cloexec.get(), F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(fcntl(cloexec.get(), F_GETFL) & O_ACCMODE, O_RDWR);

  UniqueFd plain = Alloc(Heap::kSystem, 4096, O_RDWR);
  ASSERT_TRUE(plain.valid());
  EXPECT_FALSE(fcntl(plain.get(), F_GETFD) & FD_CLOEXEC);

  // A read-only file cannot be mapped for writing (the VFS says EACCES).
  UniqueFd ro = Alloc(Heap::kSystem, 4096, O_RDONLY | O_CLOEXEC);
  ASSERT_TRUE(ro.valid());
  EXPECT_EQ(fcntl(ro.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_FALSE(Map(ro.get(), 4096).valid());
  EXPECT_EQ(errno, EACCES);
  EXPECT_TRUE(Map(ro.get(), 4096, PROT_READ).valid()) << strerror(errno);
}

TEST_F(HeapAllocTest, ValidationErrnos) {
  for (Heap heap : {Heap::kSystem, Heap::kContig}) {
    SCOPED_TRACE(HeapName(heap));
    const int h = heap_fd(heap);
    EXPECT_EQ(HeapAlloc(h, 0), -EINVAL) << "len 0";
    EXPECT_EQ(HeapAlloc(h, UINT64_MAX), -EINVAL) << "len wraps when aligned";
    EXPECT_EQ(HeapAlloc(h, UINT64_MAX - 100), -EINVAL) << "len wraps";
    EXPECT_EQ(HeapAlloc(h, 4096, O_RDWR | O_NONBLOCK), -EINVAL) << "fd_flags";
    EXPECT_EQ(HeapAlloc(h, 4096, O_RDWR | O_APPEND), -EINVAL) << "fd_flags";
    EXPECT_EQ(HeapAlloc(h, 4096, O_ACCMODE), -EINVAL) << "access mode 3";
    EXPECT_EQ(HeapAlloc(h, 4096, O_ACCMODE | O_CLOEXEC), -EINVAL) << "access mode 3";
    EXPECT_EQ(HeapAlloc(h, 4096, O_RDWR, 1), -EINVAL) << "heap_flags";
    EXPECT_EQ(HeapAlloc(h, 4096, O_RDWR, 1ull << 63), -EINVAL) << "heap_flags";

    dma_heap_allocation_data data = {};
    data.len = 4096;
    data.fd = 3;
    EXPECT_EQ(Ioctl(h, DMA_HEAP_IOCTL_ALLOC, &data), -EINVAL) << "fd in != 0";

    EXPECT_EQ(Ioctl(h, _IO('H', 1), nullptr), -ENOTTY);
    EXPECT_EQ(Ioctl(h, _IOWR('H', 7, dma_heap_allocation_data), &data), -ENOTTY);
    EXPECT_EQ(Ioctl(h, _IOWR('X', 0, dma_heap_allocation_data), &data), -ENOTTY);
    EXPECT_EQ(Ioctl(h, DMA_HEAP_IOCTL_ALLOC, reinterpret_cast<void*>(8)),
              -EFAULT);
  }
}

TEST_F(HeapAllocTest, SizesBoundedByModuleParameters) {
  const long max_mb = ModuleParam("max_buffer_mb");
  const long contig_kb = ModuleParam("contig_max_kb");
  ASSERT_GT(max_mb, 0);
  ASSERT_GT(contig_kb, 0);
  EXPECT_EQ(HeapAlloc(system_.get(), (uint64_t(max_mb) << 20) + 1), -ENOMEM);
  EXPECT_EQ(HeapAlloc(system_.get(), 1ull << 62), -ENOMEM);
  EXPECT_EQ(HeapAlloc(contig_.get(), uint64_t(contig_kb) * 1024 + 1), -ENOMEM);
  // Exactly the contiguous limit still works.
  UniqueFd fd(HeapAlloc(contig_.get(), uint64_t(contig_kb) * 1024));
  EXPECT_TRUE(fd.valid()) << strerror(-fd.get());
}

// The ioctl number encodes the struct size: older (smaller) and newer
// (larger) callers keep working, like the upstream dma-heap.
TEST_F(HeapAllocTest, StructSizeCompatibility) {
  struct {
    dma_heap_allocation_data data;
    uint64_t extra[4];
  } big = {};
  big.data.len = 8192;
  big.data.fd_flags = O_RDWR | O_CLOEXEC;
  unsigned long big_cmd = _IOC(_IOC_READ | _IOC_WRITE, 'H', 0, sizeof(big));
  ASSERT_EQ(Ioctl(system_.get(), big_cmd, &big), 0);
  UniqueFd a(static_cast<int>(big.data.fd));
  EXPECT_EQ(lseek(a.get(), 0, SEEK_END), 8192);

  // Upstream ignores what it does not know; so do we.
  big = {};
  big.data.len = 4096;
  big.data.fd_flags = O_RDWR | O_CLOEXEC;
  big.extra[3] = 0x1234;
  ASSERT_EQ(Ioctl(system_.get(), big_cmd, &big), 0);
  UniqueFd b(static_cast<int>(big.data.fd));
  EXPECT_EQ(big.extra[3], 0x1234u);

  // An older struct without heap_flags.
  dma_heap_allocation_data small = {};
  small.len = 4096;
  small.fd_flags = O_RDWR | O_CLOEXEC;
  small.heap_flags = ~0ull;  // beyond the size: never read
  unsigned long small_cmd = _IOC(_IOC_READ | _IOC_WRITE, 'H', 0,
                                 offsetof(dma_heap_allocation_data, heap_flags));
  ASSERT_EQ(Ioctl(contig_.get(), small_cmd, &small), 0);
  UniqueFd c(static_cast<int>(small.fd));
  EXPECT_EQ(lseek(c.get(), 0, SEEK_END), 4096);

  // Too small to even return the fd.
  unsigned long tiny_cmd = _IOC(_IOC_READ | _IOC_WRITE, 'H', 0, sizeof(uint64_t));
  EXPECT_EQ(Ioctl(system_.get(), tiny_cmd, &small), -EINVAL);
  // Write-only direction: the fd could not be returned either.
  EXPECT_EQ(Ioctl(system_.get(), _IOW('H', 0, dma_heap_allocation_data), &small),
            -EINVAL);
}

TEST_F(HeapAllocTest, ControlNodeErrnos) {
  halloc_buffer_info info;
  EXPECT_EQ(Info(ctl_.get(), -1, &info), -EBADF);
  EXPECT_EQ(Info(ctl_.get(), 1000, &info), -EBADF);
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  UniqueFd r(pipefd[0]), w(pipefd[1]);
  EXPECT_EQ(Info(ctl_.get(), r.get(), &info), -EINVAL) << "not a dma-buf";
  EXPECT_EQ(MakeView(ctl_.get(), r.get(), {}), -EINVAL) << "not a dma-buf";
  EXPECT_EQ(Ioctl(ctl_.get(), _IO('h', 9), nullptr), -ENOTTY);
  EXPECT_EQ(Ioctl(ctl_.get(), _IOWR('h', 9, halloc_view_data), &info), -ENOTTY);
  EXPECT_EQ(Ioctl(ctl_.get(), DMA_HEAP_IOCTL_ALLOC, &info), -ENOTTY);
  EXPECT_EQ(Ioctl(ctl_.get(), HALLOC_IOCTL_INFO, reinterpret_cast<void*>(8)),
            -EFAULT);
  // A reserved field that is not 0 (uapi: EINVAL), on a real buffer.
  UniqueFd buf = Alloc(Heap::kSystem, 4096);
  ASSERT_TRUE(buf.valid());
  ASSERT_EQ(Info(ctl_.get(), buf.get(), &info), 0);
  info = {};
  info.fd = buf.get();
  info.reserved = 1;
  EXPECT_EQ(Ioctl(ctl_.get(), HALLOC_IOCTL_INFO, &info), -EINVAL);
  // Heap nodes do not answer control ioctls and vice versa.
  EXPECT_EQ(Ioctl(system_.get(), HALLOC_IOCTL_INFO, &info), -ENOTTY);
}

}  // namespace
}  // namespace halloc_test
