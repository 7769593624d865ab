// hallocd on the kernel heaps: the daemon (in-process, through the test
// fixture users get) with the "halloc" backend, its clients' fds checked with
// the module's own accounting ioctl, mmap and vgem. What the memfd backend
// must refuse (no CPU access at all, device allow-lists), this one grants,
// and the kernel enforces it for whoever holds the fd.
#include <drm.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <xf86drm.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::halloc::BlobDescriptor;
using ::halloc::Client;
using ::halloc::testing::TestDaemon;

constexpr uint64_t kSize = 1 << 20;
constexpr uint64_t kCpuReadOften = 0x3;
constexpr uint64_t kCpuWriteOften = 0x3 << 4;
constexpr uint64_t kGpuTexture = 1 << 8;
constexpr uint64_t kProtected = 1 << 14;

// drmPrimeFDToHandle into vgem: 0 (handle closed again) or -errno.
int ImportIntoVgem(int vgem, int dmabuf) {
  uint32_t handle = 0;
  if (drmPrimeFDToHandle(vgem, dmabuf, &handle) != 0) return -errno;
  drm_gem_close close_args = {};
  close_args.handle = handle;
  drmIoctl(vgem, DRM_IOCTL_GEM_CLOSE, &close_args);
  return 0;
}

// A policy with one rule for uid 0 (the guest runs the tests as root).
std::string RootPolicy(const std::string& cpu, const std::string& attach) {
  return absl::StrCat(R"(
    clients {
      name: "root"
      match { uids: 0 }
      usages: "cpu_read_often" usages: "cpu_write_often" usages: "gpu_texture"
      heaps: "halloc"
      max_cpu_access: )", cpu, "\n", attach, R"(
      share_to: "@same_uid"
      receive_from: "@same_uid"
    })");
}

class DaemonOnKernelHeapTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    vgem_ = OpenVgem();
  }

  // Starts hallocd with `backend` and, when not empty, `policy` (text).
  void StartDaemon(const std::string& policy, const std::string& backend = "halloc") {
    absl::StatusOr<std::unique_ptr<TestDaemon>> d = halloc_test::StartDaemon(backend, policy);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }

  void TearDown() override { daemon_.reset(); }  // closes every buffer it held

  Client Connect() {
    absl::StatusOr<Client> c = daemon_->Connect();
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  std::unique_ptr<TestDaemon> daemon_;
  UniqueFd vgem_;
};

TEST_F(DaemonOnKernelHeapTest, AutoPicksTheKernelHeapAndHandsOutItsDmaBufs) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon("", "auto"));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      client.Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "frame"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(buf->info().backend(), "halloc");
  EXPECT_TRUE(buf->is_dmabuf());
  EXPECT_EQ(buf->info().fd_kind(), halloc::v1::FD_KIND_DMA_BUF);
  const halloc_buffer_info info = InfoOf(buf->fd());
  EXPECT_EQ(info.size, kSize);
  EXPECT_STREQ(info.heap, HALLOC_HEAP_DEFERRED) << "the kernel picks the pages at first use";
  EXPECT_NE(info.flags & HALLOC_INFO_NOT_BACKED, 0u);
  EXPECT_EQ(info.flags & HALLOC_INFO_IS_VIEW, 0u) << "an unrestricted client gets the buffer itself";
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ_WRITE);
  EXPECT_STREQ(info.name, "halloc:frame");

  // Zeroed, writable, and the CPU bracket (DMA_BUF_IOCTL_SYNC) works.
  absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(AllBytesAre(map->as<uint8_t>(), kSize, 0));
  std::memset(map->data(), 0x5a, kSize);
  if (vgem_.valid()) {
    EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), 0);
  }
}

// A dma-buf Mapping shares its Buffer's fd (SharedFd) for the END of its
// CPU bracket: it outlives the Buffer, and TakeFd meanwhile hands out a dup.
TEST_F(DaemonOnKernelHeapTest, DmaBufMappingSharesTheFdAndOutlivesItsBuffer) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon("", "auto"));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      client.Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "shared"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_TRUE(buf->is_dmabuf());
  const int fd = buf->fd();
  absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
  ASSERT_TRUE(map.ok()) << map.status();
  absl::StatusOr<halloc::UniqueFd> taken = buf->TakeFd();
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_NE(taken->get(), fd) << "a Mapping still uses the fd: TakeFd dups";
  EXPECT_NE(::fcntl(fd, F_GETFD), -1) << "the Mapping's fd stays open";
  buf = absl::NotFoundError("gone");  // the Buffer is destroyed
  std::memset(map->data(), 0x33, kSize);
  EXPECT_NE(::fcntl(fd, F_GETFD), -1);
  *map = halloc::Mapping();  // END of the bracket on the shared fd, then close
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1) << "the last user closed the fd";
  // The dup TakeFd gave still reaches the buffer, with the bytes written.
  void* p = ::mmap(nullptr, kSize, PROT_READ, MAP_SHARED, taken->get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_TRUE(AllBytesAre(static_cast<uint8_t*>(p), kSize, 0x33));
  ::munmap(p, kSize);
}

TEST_F(DaemonOnKernelHeapTest, ReadOnlyClientGetsAKernelEnforcedReadOnlyView) {
  ASSERT_NO_FATAL_FAILURE(
      StartDaemon(RootPolicy("CPU_ACCESS_READ", "attach_devices: \"vgem\"")));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      client.Allocate(BlobDescriptor(kSize, kCpuReadOften | kGpuTexture, "ro"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  const halloc_buffer_info info = InfoOf(buf->fd());
  EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
  EXPECT_NE(info.flags & HALLOC_VIEW_RESTRICT_ATTACH, 0u);
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
  ASSERT_EQ(info.num_drivers, 1u);
  EXPECT_STREQ(info.drivers[0], "vgem");

  EXPECT_TRUE(buf->Map(halloc::Access::kRead).ok());
  EXPECT_EQ(buf->Map(halloc::Access::kReadWrite).status().code(),
            absl::StatusCode::kPermissionDenied);
  errno = 0;
  Mapping w = halloc_test::Map(buf->fd(), kSize, PROT_READ | PROT_WRITE);
  EXPECT_FALSE(w.valid());
  EXPECT_EQ(errno, EACCES);
  EXPECT_EQ(Sync(buf->fd(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
  if (!vgem_.valid()) GTEST_SKIP() << "no vgem DRM device for the attach half";
  EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), 0) << "vgem is allowed";
}

TEST_F(DaemonOnKernelHeapTest, NoCpuClientGetsAViewTheCpuCannotMap) {
  // On memfd this rule is FAILED_PRECONDITION: nothing can stop a memfd
  // holder from mapping it. A kernel view can.
  ASSERT_NO_FATAL_FAILURE(StartDaemon(RootPolicy("CPU_ACCESS_NONE", "attach_devices: \"*\"")));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      client.Allocate(BlobDescriptor(kSize, kGpuTexture, "gpu-only"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(InfoOf(buf->fd()).cpu_access, HALLOC_CPU_NONE);
  EXPECT_EQ(InfoOf(buf->fd()).flags & HALLOC_VIEW_RESTRICT_ATTACH, 0u);
  EXPECT_EQ(buf->Map(halloc::Access::kRead).status().code(),
            absl::StatusCode::kPermissionDenied);
  errno = 0;
  EXPECT_FALSE(halloc_test::Map(buf->fd(), kSize, PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
  // A usage asking for the CPU is denied by the rule, not granted.
  EXPECT_EQ(client.Allocate(BlobDescriptor(kSize, kCpuReadOften, "x")).status().code(),
            absl::StatusCode::kPermissionDenied);
  if (!vgem_.valid()) GTEST_SKIP() << "no vgem DRM device for the attach half";
  EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), 0) << "any device may attach";
}

// Android's PROTECTED usage: the halloc-protected heap, no CPU for anyone,
// the owner included; devices still attach.
TEST_F(DaemonOnKernelHeapTest, ProtectedUsageGetsTheProtectedHeap) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(absl::StrCat(R"(
    clients {
      name: "drm"
      match { uids: 0 }
      usages: "gpu_texture" usages: "protected" usages: "cpu_read_often"
      heaps: "halloc"
      max_cpu_access: CPU_ACCESS_READ_WRITE
      attach_devices: "*"
    })")));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      client.Allocate(BlobDescriptor(kSize, kProtected | kGpuTexture, "secure"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(buf->info().cpu_access(), halloc::v1::CPU_ACCESS_NONE);
  EXPECT_TRUE(buf->info().protected_content());
  const halloc_buffer_info info = InfoOf(buf->fd());
  EXPECT_NE(info.flags & HALLOC_INFO_PROTECTED, 0u);
  EXPECT_STREQ(info.heap, HALLOC_HEAP_PROTECTED);
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_NONE);
  EXPECT_EQ(buf->Map(halloc::Access::kRead).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Protected content with CPU bits asks for the impossible.
  EXPECT_EQ(client.Allocate(BlobDescriptor(kSize, kProtected | kCpuReadOften, "x"))
                .status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!vgem_.valid()) GTEST_SKIP() << "no vgem DRM device for the attach half";
  EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), 0) << "devices still attach";
}

TEST_F(DaemonOnKernelHeapTest, DeviceOutsideTheAllowListCannotAttach) {
  if (!vgem_.valid()) GTEST_SKIP() << "no vgem DRM device (modprobe vgem)";
  ASSERT_NO_FATAL_FAILURE(
      StartDaemon(RootPolicy("CPU_ACCESS_READ_WRITE", "attach_devices: \"vivid\"")));
  Client client = Connect();
  absl::StatusOr<halloc::Buffer> buf = client.Allocate(
      BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "camera-only"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(InfoOf(buf->fd()).cpu_access, HALLOC_CPU_READ_WRITE);
  EXPECT_TRUE(buf->Map(halloc::Access::kReadWrite).ok());
  EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), -EPERM);
}

TEST_F(DaemonOnKernelHeapTest, SharedReadOnlyStaysReadOnlyInEveryProcess) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));  // default policy: share within uid
  Client owner = Connect();
  Client peer = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      owner.Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "shared"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  {
    absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
    ASSERT_TRUE(map.ok());
    std::memset(map->data(), 0xc3, kSize);
  }
  absl::StatusOr<halloc::v1::Grant> grant =
      owner.Share(buf->id(), getuid(), halloc::v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<halloc::Buffer> got = peer.Import(grant->token());
  ASSERT_TRUE(got.ok()) << got.status();

  const halloc_buffer_info info = InfoOf(got->fd());
  EXPECT_EQ(info.id, InfoOf(buf->fd()).id) << "the same pages";
  EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
  EXPECT_EQ(info.views, 1u);
  absl::StatusOr<halloc::Mapping> r = got->Map(halloc::Access::kRead);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(AllBytesAre(r->as<uint8_t>(), kSize, 0xc3));

  // Passed on to another process (no gRPC there: it only maps), the fd
  // still cannot be mapped for writing, nor mprotect'ed to writable.
  const int fd = got->fd();
  const int status = RunInChild([fd] {
    void* w = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (w != MAP_FAILED) _exit(10);
    void* p = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) _exit(11);
    if (mprotect(p, kSize, PROT_READ | PROT_WRITE) == 0) _exit(12);
    _exit(0);
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: write map, 11: no read map, 12: mprotect";
}

// Revoke reaches fds already imported: the receiver's mapping, and one in
// a process it passed the fd to, fault at once; the receiver can neither
// map again nor hand the fd to a device, and no longer holds the buffer;
// the owner never notices.
TEST_F(DaemonOnKernelHeapTest, OwnerRevokesAReceiverLive) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));  // default policy: share within uid
  Client owner = Connect();
  Client peer = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      owner.Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "revoked"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<halloc::Mapping> mine = buf->Map(halloc::Access::kReadWrite);
  ASSERT_TRUE(mine.ok());
  std::memset(mine->data(), 0x6b, kSize);
  absl::StatusOr<halloc::v1::Grant> grant =
      owner.Share(buf->id(), getuid(), halloc::v1::CPU_ACCESS_READ_WRITE);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<halloc::Buffer> got = peer.Import(grant->token());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_NE(InfoOf(got->fd()).flags & HALLOC_INFO_IS_VIEW, 0u)
      << "even a full-rights import is its own view, so it can be cut off";
  absl::StatusOr<halloc::Mapping> theirs = got->Map(halloc::Access::kReadWrite);
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_TRUE(AllBytesAre(theirs->as<uint8_t>(), kSize, 0x6b));

  int go[2], mapped[2];
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(mapped), 0);
  const int fd = got->fd();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // a process the fd was passed to
    close(go[1]);
    close(mapped[0]);
    auto* p = static_cast<volatile uint8_t*>(
        mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED || p[kSize - 1] != 0x6b) _exit(10);
    if (write(mapped[1], "m", 1) != 1) _exit(12);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(11);
    (void)p[0];  // after the revoke: SIGBUS
    _exit(0);
  }
  close(go[0]);
  close(mapped[1]);
  // The child has mapped (and read the last byte) before the revoke.
  char m = 0;
  const ssize_t said = read(mapped[0], &m, 1);
  close(mapped[0]);
  if (said != 1) {
    int early = 0;
    waitpid(pid, &early, 0);
    FAIL() << "the child could not map before the revoke (status " << early << ")";
  }
  EXPECT_TRUE(owner.live_revoke()) << "the halloc backend cuts imports off";
  ASSERT_TRUE(owner.Revoke(grant->id()).ok());
  ASSERT_EQ(write(go[1], "g", 1), 1);
  close(go[1]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS)
      << "child status " << status << " (exit 10: could not map before the revoke)";

  EXPECT_NE(InfoOf(got->fd()).flags & HALLOC_INFO_REVOKED, 0u);
  EXPECT_EQ(got->Map(halloc::Access::kRead).status().code(), absl::StatusCode::kNotFound)
      << "as client.h says: the module's ENODEV";
  // The mapping made before: its end of CPU access says it was revoked,
  // and so does a new beginning (each bracket is the module's ioctl).
  absl::Status ended = theirs->EndAccess();
  EXPECT_EQ(ended.code(), absl::StatusCode::kNotFound) << "a revoked view's writes ended silently";
  EXPECT_NE(ended.message().find("SYNC(END)"), absl::string_view::npos) << ended;
  absl::Status begun = theirs->BeginAccess();
  EXPECT_EQ(begun.code(), absl::StatusCode::kNotFound) << "a revoked view began CPU access";
  EXPECT_NE(begun.message().find("SYNC(START)"), absl::string_view::npos) << begun;
  EXPECT_TRUE(theirs->Unmap().ok()) << "no access left begun to end";
  if (vgem_.valid()) {
    EXPECT_EQ(ImportIntoVgem(vgem_.get(), got->fd()), -ENODEV);
  }
  EXPECT_EQ(peer.Describe(got->id()).status().code(), absl::StatusCode::kNotFound)
      << "the receiver held it only through the revoked grant";
  // The owner's buffer and mapping are untouched, its brackets too.
  EXPECT_EQ(InfoOf(buf->fd()).flags & HALLOC_INFO_REVOKED, 0u);
  ASSERT_TRUE(mine->EndAccess().ok());
  ASSERT_TRUE(mine->BeginAccess().ok());
  std::memset(mine->data(), 0x21, kSize);
  EXPECT_TRUE(AllBytesAre(mine->as<uint8_t>(), kSize, 0x21));
  EXPECT_TRUE(mine->Unmap().ok());
  if (vgem_.valid()) {
    EXPECT_EQ(ImportIntoVgem(vgem_.get(), buf->fd()), 0);
  }
}

// A client that shared on what it imported, then ended its session: a
// revoke of the grant it imported through still cuts off those it shared
// with (its grant outlives its session for that).
TEST_F(DaemonOnKernelHeapTest, ARevokeReachesOnwardImportsOfAnEndedSession) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));  // default policy: share within uid
  Client owner = Connect();
  Client last = Connect();
  absl::StatusOr<halloc::Buffer> buf =
      owner.Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "onward"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<halloc::v1::Grant> to_middle =
      owner.Share(buf->id(), getuid(), halloc::v1::CPU_ACCESS_READ);
  ASSERT_TRUE(to_middle.ok()) << to_middle.status();
  absl::StatusOr<halloc::Buffer> got;
  {
    Client middle = Connect();
    absl::StatusOr<halloc::Buffer> imported = middle.Import(to_middle->token());
    ASSERT_TRUE(imported.ok()) << imported.status();
    absl::StatusOr<halloc::v1::Grant> onward =
        middle.Share(imported->id(), getuid(), halloc::v1::CPU_ACCESS_READ);
    ASSERT_TRUE(onward.ok()) << onward.status();
    got = last.Import(onward->token());
    ASSERT_TRUE(got.ok()) << got.status();
  }  // the middle's session ends
  // Its holds go once hallocd has seen the connection close.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  absl::StatusOr<halloc::v1::BufferInfo> info;
  do {
    absl::SleepFor(absl::Milliseconds(10));
    info = owner.Describe(buf->id());
    ASSERT_TRUE(info.ok()) << info.status();
  } while (info->holders_size() > 2 && absl::Now() < deadline);
  ASSERT_EQ(info->holders_size(), 2) << "the middle's session did not end";
  absl::StatusOr<halloc::Mapping> before = got->Map(halloc::Access::kRead);
  ASSERT_TRUE(before.ok()) << before.status();

  ASSERT_TRUE(owner.Revoke(to_middle->id()).ok());
  EXPECT_NE(InfoOf(got->fd()).flags & HALLOC_INFO_REVOKED, 0u)
      << "the onward import outlived the revoke of the grant it came through";
  EXPECT_EQ(got->Map(halloc::Access::kRead).status().code(), absl::StatusCode::kNotFound)
      << "as client.h says: the module's ENODEV";
  EXPECT_EQ(last.Describe(got->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(InfoOf(buf->fd()).flags & HALLOC_INFO_REVOKED, 0u);
}

TEST_F(DaemonOnKernelHeapTest, ReleasedBufferLeavesTheKernel) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));
  Client client = Connect();
  uint64_t kernel_id = 0;
  {
    absl::StatusOr<halloc::Buffer> buf = client.Allocate(BlobDescriptor(kSize, 0, "gone"));
    ASSERT_TRUE(buf.ok()) << buf.status();
    kernel_id = InfoOf(buf->fd()).id;
    ASSERT_TRUE(client.Release(buf->id()).ok());
  }  // the client's fd closes here; the daemon's goes on its reaper thread
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (BufferListed(kernel_id) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(BufferListed(kernel_id)) << "kernel buffer " << kernel_id << " still alive";
  EXPECT_EQ(client.Stats()->live_buffers(), 0u);
}

// A dma-buf's end raises no event: hallocd asks (its fdinfo's count, and
// the module for views), and a refusal asks again first.
TEST_F(DaemonOnKernelHeapTest, MemoryAClientKeepsPastReleaseStaysChargedUntilItsLastReference) {
  for (const char* cpu : {"CPU_ACCESS_READ_WRITE", "CPU_ACCESS_READ"}) {
    SCOPED_TRACE(cpu);  // READ: the client's fd is a view, a dma-buf of its own
    ASSERT_NO_FATAL_FAILURE(
        StartDaemon(RootPolicy(cpu, "attach_devices: \"*\" quota_buffers: 1")));
    Client client = Connect();
    UniqueFd kept;
    void* map = MAP_FAILED;
    {
      absl::StatusOr<halloc::Buffer> buf = client.Allocate(BlobDescriptor(kSize, 0, "kept"));
      ASSERT_TRUE(buf.ok()) << buf.status();
      kept = UniqueFd(::dup(buf->fd()));
      map = ::mmap(nullptr, kSize, PROT_READ, MAP_SHARED, kept.get(), 0);
      ASSERT_NE(map, MAP_FAILED);
      ASSERT_TRUE(client.Release(buf->id()).ok());
    }
    absl::StatusOr<halloc::Buffer> more = client.Allocate(BlobDescriptor(kSize, 0, "more"));
    EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted) << more.status();
    EXPECT_EQ(client.Stats()->released_held_buffers(), 1u);
    kept.reset();
    more = client.Allocate(BlobDescriptor(kSize, 0, "more"));
    EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted)
        << "the mapping still holds it: " << more.status();
    ASSERT_EQ(::munmap(map, kSize), 0);
    more = client.Allocate(BlobDescriptor(kSize, 0, "more"));
    EXPECT_TRUE(more.ok()) << "gone, and asked about at the refusal: " << more.status();
    daemon_.reset();
  }
}

// An O_PATH open through /proc keeps a dma-buf alive without a reference
// to its file (fdinfo cannot see it); the module's count of the dentry's
// holders does.
TEST_F(DaemonOnKernelHeapTest, AnOPathOpenKeepsTheChargeAsLongAsTheMemory) {
  ASSERT_NO_FATAL_FAILURE(
      StartDaemon(RootPolicy("CPU_ACCESS_READ_WRITE", "attach_devices: \"*\" quota_buffers: 1")));
  Client client = Connect();
  UniqueFd pinned;
  uint64_t kernel_id = 0;
  {
    absl::StatusOr<halloc::Buffer> buf = client.Allocate(BlobDescriptor(kSize, 0, "pinned"));
    ASSERT_TRUE(buf.ok()) << buf.status();
    kernel_id = InfoOf(buf->fd()).id;
    pinned = UniqueFd(::open(absl::StrCat("/proc/self/fd/", buf->fd()).c_str(),
                             O_PATH | O_CLOEXEC));
    ASSERT_TRUE(pinned.valid()) << std::strerror(errno);
    ASSERT_TRUE(client.Release(buf->id()).ok());
  }
  absl::StatusOr<halloc::Buffer> more = client.Allocate(BlobDescriptor(kSize, 0, "more"));
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted) << more.status();
  EXPECT_TRUE(BufferListed(kernel_id)) << "its pages are still there";
  pinned.reset();
  more = client.Allocate(BlobDescriptor(kSize, 0, "more"));
  EXPECT_TRUE(more.ok()) << more.status();
  EXPECT_FALSE(BufferListed(kernel_id));
}

}  // namespace
}  // namespace halloc_test
