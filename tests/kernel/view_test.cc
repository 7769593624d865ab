// Views (HALLOC_IOCTL_VIEW): rights enforced by the kernel, only narrowing,
// outliving their parent; and the accounting ioctl.
#include <errno.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

class ViewTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    size_ = 16 * PageAlign(1);
    buf_ = Alloc(Heap::kSystem, size_);
    ASSERT_TRUE(buf_.valid());
  }

  UniqueFd View(int source, const ViewSpec& spec) {
    int fd = MakeView(ctl_.get(), source, spec);
    EXPECT_GE(fd, 0) << "view: " << strerror(-fd);
    return UniqueFd(fd);
  }

  size_t size_ = 0;
  UniqueFd buf_;
};

ViewSpec Cpu(uint32_t cpu) {
  ViewSpec spec;
  spec.cpu = cpu;
  return spec;
}

ViewSpec Drivers(std::vector<std::string> drivers, uint32_t cpu = HALLOC_CPU_READ_WRITE) {
  ViewSpec spec;
  spec.cpu = cpu;
  spec.restrict_attach = true;
  spec.drivers = std::move(drivers);
  return spec;
}

TEST_F(ViewTest, NoCpuViewRefusesEveryCpuPath) {
  UniqueFd view = View(buf_.get(), Cpu(HALLOC_CPU_NONE));
  ASSERT_TRUE(view.valid());
  EXPECT_EQ(fcntl(view.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_FALSE(Map(view.get(), size_, PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
  EXPECT_FALSE(Map(view.get(), size_, PROT_READ | PROT_WRITE).valid());
  EXPECT_EQ(errno, EACCES) << "read-only file";
  for (uint64_t rw : {uint64_t(DMA_BUF_SYNC_READ), uint64_t(DMA_BUF_SYNC_WRITE),
                      uint64_t(DMA_BUF_SYNC_RW)}) {
    EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_START | rw), -EPERM);
    EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_END | rw), -EPERM);
  }
  // Kernel vmap on a no-CPU view is covered by VividTest (vb2-vmalloc).
  // Harmless file operations still work.
  EXPECT_EQ(lseek(view.get(), 0, SEEK_END), off_t(size_));
}

TEST_F(ViewTest, ReadOnlyViewRefusesWrites) {
  Mapping rw = Map(buf_.get(), size_);
  ASSERT_TRUE(rw.valid());
  memset(rw.data(), 0x3c, size_);

  UniqueFd view = View(buf_.get(), Cpu(HALLOC_CPU_READ));
  ASSERT_TRUE(view.valid());
  EXPECT_EQ(fcntl(view.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_FALSE(Map(view.get(), size_, PROT_READ | PROT_WRITE).valid());
  EXPECT_EQ(errno, EACCES);
  EXPECT_FALSE(Map(view.get(), size_, PROT_WRITE).valid());
  EXPECT_EQ(errno, EACCES);

  Mapping ro = Map(view.get(), size_, PROT_READ);
  ASSERT_TRUE(ro.valid()) << strerror(errno);
  EXPECT_TRUE(AllBytesAre(ro.data(), size_, 0x3c));
  EXPECT_EQ(mprotect(ro.data(), size_, PROT_READ | PROT_WRITE), -1);
  EXPECT_EQ(errno, EACCES);

  EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), 0);
  EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ), 0);
  EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
  EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW), -EPERM);

  // Writes through the parent show through the view: same pages.
  rw.data()[size_ - 1] = 0x77;
  EXPECT_EQ(ro.data()[size_ - 1], 0x77);

  // The child cannot write through the read-only mapping.
  uint8_t* p = ro.data();
  int status = RunInChild([p] { *reinterpret_cast<volatile uint8_t*>(p) = 1; });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
}

// Exit code of a child that could not switch to the uid it was asked to.
constexpr int kCannotSwitchUid = 255;

// In a forked child (as `uid` unless 0): 0 when open("/proc/self/fd/<fd>",
// flags) succeeds, else its errno; kCannotSwitchUid if the uid switch failed.
int ReopenErrno(int fd, int flags, uid_t uid) {
  // Made before the fork: the child of this threaded process (gRPC's) makes
  // async-signal-safe calls only.
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  int status = RunInChild([=, &path] {
    if (uid != 0 && (setgroups(0, nullptr) != 0 || setgid(uid) != 0 ||
                     setuid(uid) != 0)) {
      _exit(kCannotSwitchUid);
    }
    const int reopened = open(path.c_str(), flags | O_CLOEXEC);
    _exit(reopened >= 0 ? 0 : errno);
  });
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Issue #10: a read-only memfd could be reopened O_RDWR through
// /proc/self/fd because its inode allowed it. A dma-buf's inode is an anon
// inode (mode 0600, owned by whoever made the dma-buf: here, and in hallocd,
// root) whose f_op is no_open_fops, so the reopen is refused for everyone: by
// no_open (ENXIO) for root, by the mode (EACCES) before it for another uid.
// The rights of a view therefore cannot be widened by reopening it.
TEST_F(ViewTest, ReadOnlyViewCannotBeReopenedThroughProc) {
  constexpr uid_t kStranger = 65534;
  Mapping rw = Map(buf_.get(), size_);
  ASSERT_TRUE(rw.valid());
  memset(rw.data(), 0x5a, size_);

  for (uint32_t cpu : {uint32_t(HALLOC_CPU_READ), uint32_t(HALLOC_CPU_NONE)}) {
    SCOPED_TRACE(cpu == HALLOC_CPU_READ ? "CPU read view" : "CPU none view");
    UniqueFd view = View(buf_.get(), Cpu(cpu));
    ASSERT_TRUE(view.valid());
    for (int flags : {O_RDWR, O_WRONLY, O_RDONLY}) {
      SCOPED_TRACE(flags == O_RDWR ? "O_RDWR" : flags == O_WRONLY ? "O_WRONLY" : "O_RDONLY");
      const int as_root = ReopenErrno(view.get(), flags, 0);
      EXPECT_EQ(as_root, ENXIO) << "as root: " << strerror(as_root);
      const int as_stranger = ReopenErrno(view.get(), flags, kStranger);
      ASSERT_NE(as_stranger, kCannotSwitchUid) << "setuid(" << kStranger << ")";
      EXPECT_EQ(as_stranger, EACCES)
          << "as uid " << kStranger << ": " << strerror(as_stranger);
    }
    // Still what it was: a read-only file, no writable mapping.
    EXPECT_EQ(fcntl(view.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
    EXPECT_FALSE(Map(view.get(), size_, PROT_READ | PROT_WRITE).valid());
    EXPECT_EQ(errno, EACCES);
    EXPECT_EQ(Sync(view.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
    EXPECT_EQ(InfoOf(view.get()).cpu_access, cpu);
  }
  // The buffer's own (read-write) fd cannot be reopened either.
  EXPECT_EQ(ReopenErrno(buf_.get(), O_RDWR, 0), ENXIO);
  EXPECT_TRUE(AllBytesAre(rw.data(), size_, 0x5a));
}

TEST_F(ViewTest, ReadWriteViewSharesPages) {
  UniqueFd view = View(buf_.get(), Cpu(HALLOC_CPU_READ_WRITE));
  ASSERT_TRUE(view.valid());
  EXPECT_EQ(fcntl(view.get(), F_GETFL) & O_ACCMODE, O_RDWR);
  Mapping v = Map(view.get(), size_);
  Mapping b = Map(buf_.get(), size_, PROT_READ);
  ASSERT_TRUE(v.valid() && b.valid()) << strerror(errno);
  memset(v.data(), 0x42, size_);
  EXPECT_TRUE(AllBytesAre(b.data(), size_, 0x42));
}

TEST_F(ViewTest, RightsCannotWiden) {
  UniqueFd ro = View(buf_.get(), Cpu(HALLOC_CPU_READ));
  ASSERT_TRUE(ro.valid());
  EXPECT_EQ(MakeView(ctl_.get(), ro.get(), Cpu(HALLOC_CPU_READ_WRITE)), -EPERM);
  UniqueFd ro2 = View(ro.get(), Cpu(HALLOC_CPU_READ));
  EXPECT_TRUE(ro2.valid());
  UniqueFd none = View(ro.get(), Cpu(HALLOC_CPU_NONE));
  ASSERT_TRUE(none.valid());
  EXPECT_EQ(MakeView(ctl_.get(), none.get(), Cpu(HALLOC_CPU_READ)), -EPERM);
  EXPECT_EQ(MakeView(ctl_.get(), none.get(), Cpu(HALLOC_CPU_READ_WRITE)), -EPERM);

  UniqueFd vgem_only = View(buf_.get(), Drivers({"vgem"}));
  ASSERT_TRUE(vgem_only.valid());
  EXPECT_EQ(MakeView(ctl_.get(), vgem_only.get(), Cpu(HALLOC_CPU_READ_WRITE)), -EPERM)
      << "dropping the attach restriction widens";
  EXPECT_EQ(MakeView(ctl_.get(), vgem_only.get(), Drivers({"vgem", "vivid"})), -EPERM);
  EXPECT_EQ(MakeView(ctl_.get(), vgem_only.get(), Drivers({"vivid"})), -EPERM);
  UniqueFd still_vgem = View(vgem_only.get(), Drivers({"vgem"}, HALLOC_CPU_READ));
  EXPECT_TRUE(still_vgem.valid());
  UniqueFd nobody = View(vgem_only.get(), Drivers({}));
  ASSERT_TRUE(nobody.valid());
  EXPECT_EQ(MakeView(ctl_.get(), nobody.get(), Drivers({"vgem"})), -EPERM);

  halloc_buffer_info info = InfoOf(still_vgem.get());
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
  EXPECT_EQ(info.flags & ~HALLOC_INFO_BELOW_4G,
            HALLOC_VIEW_RESTRICT_ATTACH | HALLOC_INFO_IS_VIEW);
  ASSERT_EQ(info.num_drivers, 1u);
  EXPECT_STREQ(info.drivers[0], "vgem");
}

TEST_F(ViewTest, ReadOnlyFileCountsAsReadOnly) {
  UniqueFd ro_file = Alloc(Heap::kSystem, 4096, O_RDONLY | O_CLOEXEC);
  ASSERT_TRUE(ro_file.valid());
  EXPECT_EQ(MakeView(ctl_.get(), ro_file.get(), Cpu(HALLOC_CPU_READ_WRITE)), -EPERM);
  UniqueFd ro = View(ro_file.get(), Cpu(HALLOC_CPU_READ));
  EXPECT_TRUE(ro.valid());
}

// A write-only fd cannot be mapped, so no view of it may be: before, only
// the write bit was looked at and a write-only fd begot a readable view.
TEST_F(ViewTest, WriteOnlyFileCountsAsNoCpu) {
  UniqueFd wo_file = Alloc(Heap::kSystem, 4096, O_WRONLY | O_CLOEXEC);
  ASSERT_TRUE(wo_file.valid());
  EXPECT_EQ(MakeView(ctl_.get(), wo_file.get(), Cpu(HALLOC_CPU_READ)), -EPERM);
  EXPECT_EQ(MakeView(ctl_.get(), wo_file.get(), Cpu(HALLOC_CPU_READ_WRITE)), -EPERM);
  UniqueFd none = View(wo_file.get(), Cpu(HALLOC_CPU_NONE));
  EXPECT_TRUE(none.valid());
  // The errnos the uapi names: the O_WRONLY original fails any mapping in
  // the VFS (EACCES); its NONE view, an O_RDONLY file, in the module (EPERM).
  EXPECT_FALSE(Map(wo_file.get(), 4096, PROT_READ).valid());
  EXPECT_EQ(errno, EACCES);
  EXPECT_FALSE(Map(none.get(), 4096, PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
}

// What follows a driver name's NUL is dropped, not kept and shown to every
// holder by INFO (a creator's stack bytes, say).
TEST_F(ViewTest, BytesAfterADriverNameAreNotKept) {
  halloc_view_data d = {};
  d.source_fd = buf_.get();
  d.cpu_access = HALLOC_CPU_READ;
  d.fd_flags = O_CLOEXEC;
  d.flags = HALLOC_VIEW_RESTRICT_ATTACH;
  d.num_drivers = 1;
  memcpy(d.drivers[0], "vgem\0secret", 11);
  ASSERT_EQ(Ioctl(ctl_.get(), HALLOC_IOCTL_VIEW, &d), 0);
  UniqueFd view(static_cast<int>(d.fd));
  const halloc_buffer_info info = InfoOf(view.get());
  ASSERT_EQ(info.num_drivers, 1u);
  EXPECT_STREQ(info.drivers[0], "vgem");
  EXPECT_EQ(std::count(info.drivers[0], info.drivers[0] + HALLOC_NAME_LEN, '\0'),
            HALLOC_NAME_LEN - 4);
}

// An original's rights are its fd's access mode too, for every path that
// maps or syncs for its holder (an importer's mmap never meets the VFS
// check): INFO and DMA_BUF_IOCTL_SYNC say so. Before, both said READ_WRITE.
TEST_F(ViewTest, AnOriginalsRightsFollowItsFdsMode) {
  UniqueFd ro = Alloc(Heap::kSystem, 4096, O_RDONLY | O_CLOEXEC);
  UniqueFd wo = Alloc(Heap::kSystem, 4096, O_WRONLY | O_CLOEXEC);
  ASSERT_TRUE(ro.valid() && wo.valid());
  EXPECT_EQ(InfoOf(buf_.get()).cpu_access, HALLOC_CPU_READ_WRITE);
  EXPECT_EQ(InfoOf(ro.get()).cpu_access, HALLOC_CPU_READ);
  EXPECT_EQ(InfoOf(wo.get()).cpu_access, HALLOC_CPU_NONE);
  EXPECT_EQ(Sync(ro.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
  EXPECT_EQ(Sync(ro.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), 0);
  EXPECT_EQ(Sync(ro.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ), 0);
  EXPECT_EQ(Sync(wo.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), -EPERM);
}

TEST_F(ViewTest, ViewOutlivesParent) {
  Mapping b = Map(buf_.get(), size_);
  ASSERT_TRUE(b.valid());
  memset(b.data(), 0x9e, size_);
  b.reset();
  const uint64_t id = InfoOf(buf_.get()).id;

  ViewSpec spec = Cpu(HALLOC_CPU_READ);
  spec.name = "client-42";
  UniqueFd view = View(buf_.get(), spec);
  ASSERT_TRUE(view.valid());
  UniqueFd grandchild = View(view.get(), Cpu(HALLOC_CPU_NONE));
  ASSERT_TRUE(grandchild.valid());
  EXPECT_EQ(InfoOf(view.get()).dmabufs, 3u);
  buf_.reset();
  view.reset();

  // Only the grandchild remains; it still keeps the pages.
  halloc_buffer_info info = InfoOf(grandchild.get());
  EXPECT_EQ(info.id, id);
  EXPECT_EQ(info.dmabufs, 1u);
  EXPECT_EQ(info.views, 1u);
  EXPECT_EQ(info.size, size_);
  // The middle view's name belongs to it, not to views made from it.
  EXPECT_STREQ(info.name, "");
}

TEST_F(ViewTest, DataSurvivesParentClose) {
  Mapping b = Map(buf_.get(), size_);
  ASSERT_TRUE(b.valid());
  memset(b.data(), 0x6b, size_);
  b.reset();
  UniqueFd view = View(buf_.get(), Cpu(HALLOC_CPU_READ));
  ASSERT_TRUE(view.valid());
  buf_.reset();
  Mapping v = Map(view.get(), size_, PROT_READ);
  ASSERT_TRUE(v.valid()) << strerror(errno);
  EXPECT_TRUE(AllBytesAre(v.data(), size_, 0x6b));
}

TEST_F(ViewTest, AccountingAndName) {
  ViewSpec spec = Drivers({"vgem", "vivid"}, HALLOC_CPU_READ);
  spec.name = "compositor";
  UniqueFd view = View(buf_.get(), spec);
  ASSERT_TRUE(view.valid());

  halloc_buffer_info parent = InfoOf(buf_.get());
  halloc_buffer_info child = InfoOf(view.get());
  EXPECT_EQ(parent.id, child.id);
  EXPECT_EQ(parent.dmabufs, 2u);
  EXPECT_EQ(parent.views, 1u);
  EXPECT_EQ(parent.flags & ~HALLOC_INFO_BELOW_4G, 0u);
  EXPECT_EQ(parent.cpu_access, HALLOC_CPU_READ_WRITE);
  EXPECT_STREQ(child.name, "compositor");
  EXPECT_STREQ(child.heap, HALLOC_HEAP_SYSTEM);
  EXPECT_EQ(child.num_drivers, 2u);
  EXPECT_STREQ(child.drivers[1], "vivid");
  EXPECT_EQ(child.attachments, 0u);
  EXPECT_EQ(child.maps, 0u);
  EXPECT_EQ(child.vmaps, 0u);

  std::string fdinfo = ReadFile("/proc/self/fdinfo/" + std::to_string(view.get()));
  EXPECT_NE(fdinfo.find("compositor"), std::string::npos) << fdinfo;

  std::string dbg = ReadFile("/sys/kernel/debug/halloc/buffers");
  EXPECT_NE(dbg.find(HALLOC_HEAP_SYSTEM), std::string::npos) << dbg;
  EXPECT_NE(dbg.find("total:"), std::string::npos) << dbg;

  // O_CLOEXEC is the caller's choice.
  EXPECT_TRUE(fcntl(view.get(), F_GETFD) & FD_CLOEXEC);
  ViewSpec inherit = Cpu(HALLOC_CPU_READ);
  inherit.fd_flags = 0;
  UniqueFd v2 = View(buf_.get(), inherit);
  ASSERT_TRUE(v2.valid());
  EXPECT_FALSE(fcntl(v2.get(), F_GETFD) & FD_CLOEXEC);
}

TEST_F(ViewTest, InvalidArguments) {
  auto view_errno = [&](halloc_view_data data) {
    int ret = Ioctl(ctl_.get(), HALLOC_IOCTL_VIEW, &data);
    if (ret == 0) close(static_cast<int>(data.fd));
    return ret;
  };
  halloc_view_data good = {};
  good.source_fd = buf_.get();
  good.cpu_access = HALLOC_CPU_READ;
  good.fd_flags = O_CLOEXEC;

  halloc_view_data d = good;
  EXPECT_EQ(view_errno(d), 0);
  d = good; d.fd = 5;                     EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.fd_flags = O_RDWR;          EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.fd_flags = O_NONBLOCK;      EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.cpu_access = 3;             EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.flags = 2;                  EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.flags = HALLOC_VIEW_RESTRICT_ATTACH; d.num_drivers = HALLOC_MAX_DRIVERS + 1;
  EXPECT_EQ(view_errno(d), -EINVAL);
  d = good; d.num_drivers = 1; strcpy(d.drivers[0], "vgem");
  EXPECT_EQ(view_errno(d), -EINVAL) << "drivers without RESTRICT_ATTACH";
  d = good; d.flags = HALLOC_VIEW_RESTRICT_ATTACH; d.num_drivers = 1;
  EXPECT_EQ(view_errno(d), -EINVAL) << "empty driver name";
  d = good; d.flags = HALLOC_VIEW_RESTRICT_ATTACH; d.num_drivers = 1;
  memset(d.drivers[0], 'a', HALLOC_NAME_LEN);
  EXPECT_EQ(view_errno(d), -EINVAL) << "unterminated driver name";
  d = good; memset(d.name, 'n', HALLOC_NAME_LEN);
  EXPECT_EQ(view_errno(d), -EINVAL) << "unterminated name";
  d = good; d.view_id = 7;
  EXPECT_EQ(view_errno(d), -EINVAL) << "view_id is an out field";
  d = good; d.drivers[HALLOC_MAX_DRIVERS - 1][5] = 'x';
  EXPECT_EQ(view_errno(d), -EINVAL) << "an unused drivers entry is reserved";
  d = good; d.flags = HALLOC_VIEW_RESTRICT_ATTACH; d.num_drivers = 1;
  strcpy(d.drivers[0], "vgem"); d.drivers[1][0] = 'x';
  EXPECT_EQ(view_errno(d), -EINVAL) << "the entry after the last in use";
  d = good; d.source_fd = -1;             EXPECT_EQ(view_errno(d), -EBADF);
  d = good; d.source_fd = ctl_.get();     EXPECT_EQ(view_errno(d), -EINVAL);
}

TEST_F(ViewTest, StructSizeCompatibility) {
  halloc_view_data data = {};
  data.source_fd = buf_.get();
  data.cpu_access = HALLOC_CPU_READ;
  // Older, smaller struct: no name, no drivers.
  unsigned long small = _IOC(_IOC_READ | _IOC_WRITE, HALLOC_IOC_MAGIC, 0,
                             offsetof(halloc_view_data, name));
  ASSERT_EQ(Ioctl(ctl_.get(), small, &data), 0);
  UniqueFd a(static_cast<int>(data.fd));
  EXPECT_EQ(InfoOf(a.get()).cpu_access, HALLOC_CPU_READ);

  // Newer, larger struct with zeros in what we do not know: fine.
  struct {
    halloc_view_data data;
    uint8_t extra[24];
  } big = {};
  big.data.source_fd = buf_.get();
  big.data.cpu_access = HALLOC_CPU_NONE;
  unsigned long big_cmd = _IOC(_IOC_READ | _IOC_WRITE, HALLOC_IOC_MAGIC, 0, sizeof(big));
  ASSERT_EQ(Ioctl(ctl_.get(), big_cmd, &big), 0);
  UniqueFd b(static_cast<int>(big.data.fd));
  EXPECT_EQ(InfoOf(b.get()).cpu_access, HALLOC_CPU_NONE);
  // ...but not something we would silently ignore.
  big.data.fd = 0;
  big.extra[7] = 1;
  EXPECT_EQ(Ioctl(ctl_.get(), big_cmd, &big), -E2BIG);
  // Too small to say what to do.
  unsigned long tiny = _IOC(_IOC_READ | _IOC_WRITE, HALLOC_IOC_MAGIC, 0, 8);
  EXPECT_EQ(Ioctl(ctl_.get(), tiny, &data), -EINVAL);

  // INFO: an older caller gets the prefix it knows.
  halloc_buffer_info info = {};
  info.fd = buf_.get();
  unsigned long info_small = _IOC(_IOC_READ | _IOC_WRITE, HALLOC_IOC_MAGIC, 1,
                                  offsetof(halloc_buffer_info, id));
  ASSERT_EQ(Ioctl(ctl_.get(), info_small, &info), 0);
  EXPECT_EQ(info.size, size_);
  EXPECT_EQ(info.id, 0u) << "beyond the caller's struct: untouched";
}

}  // namespace
}  // namespace halloc_test
