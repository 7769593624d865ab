// Implicit-sync fences through libhalloc's Buffer::ExportSyncFile /
// ImportSyncFile on halloc dma-bufs, with vgem's fence ioctls as the device
// that writes: the sync_file a reader gets stays unsignalled until vgem
// signals its write fence.
#include <drm.h>
#include <errno.h>
#include <poll.h>
#include <xf86drm.h>

#include <cstring>

#include "clients/cpp/halloc/client.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

// vgem's fence UAPI (include/uapi/drm/vgem_drm.h; libdrm ships no header).
struct VgemFenceAttach {
  uint32_t handle;
  uint32_t flags;  // kVgemFenceWrite
  uint32_t out_fence;
  uint32_t pad;
};
struct VgemFenceSignal {
  uint32_t fence;
  uint32_t flags;
};
constexpr uint32_t kVgemFenceWrite = 0x1;
constexpr unsigned long kVgemFenceAttach =
    DRM_IOWR(DRM_COMMAND_BASE + 0x1, VgemFenceAttach);
constexpr unsigned long kVgemFenceSignal =
    DRM_IOW(DRM_COMMAND_BASE + 0x2, VgemFenceSignal);

// Whether a sync_file is signalled now.
bool Signalled(int sync_file) {
  pollfd p = {sync_file, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

class FenceTest : public VgemTest {
 protected:
  // A halloc buffer as libhalloc's Buffer (its own fd).
  halloc::Buffer AsBuffer(size_t size) {
    UniqueFd fd = Alloc(Heap::kSystem, size);
    EXPECT_TRUE(fd.valid());
    halloc::v1::BufferInfo info;
    info.set_size(size);
    return halloc::Buffer(info, halloc::UniqueFd(fd.release()));
  }
};

TEST_F(FenceTest, ReaderWaitsForTheDevicesWriteFence) {
  constexpr size_t kSize = 64 * 1024;
  halloc::Buffer buf = AsBuffer(kSize);
  // Nothing pending: a reader's sync_file is signalled at once.
  absl::StatusOr<halloc::UniqueFd> idle = buf.ExportSyncFile(halloc::Access::kRead);
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_TRUE(Signalled(idle->get()));

  int64_t h = Import(vgem_.get(), buf.fd());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle handle(vgem_.get(), uint32_t(h));
  VgemFenceAttach attach = {handle.get(), kVgemFenceWrite, 0, 0};
  ASSERT_EQ(drmIoctl(vgem_.get(), kVgemFenceAttach, &attach), 0) << strerror(errno);

  absl::StatusOr<halloc::UniqueFd> read = buf.ExportSyncFile(halloc::Access::kRead);
  ASSERT_TRUE(read.ok()) << read.status();
  absl::StatusOr<halloc::UniqueFd> write = buf.ExportSyncFile(halloc::Access::kReadWrite);
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_FALSE(Signalled(read->get())) << "the device has not finished writing";
  EXPECT_FALSE(Signalled(write->get()));

  // Explicit sync into another buffer: its readers now wait for that write.
  halloc::Buffer other = AsBuffer(kSize);
  ASSERT_TRUE(other.ImportSyncFile(*read, halloc::Access::kReadWrite).ok());
  absl::StatusOr<halloc::UniqueFd> chained = other.ExportSyncFile(halloc::Access::kRead);
  ASSERT_TRUE(chained.ok()) << chained.status();
  EXPECT_FALSE(Signalled(chained->get()));

  VgemFenceSignal signal = {attach.out_fence, 0};
  ASSERT_EQ(drmIoctl(vgem_.get(), kVgemFenceSignal, &signal), 0) << strerror(errno);
  EXPECT_TRUE(Signalled(read->get()));
  EXPECT_TRUE(Signalled(write->get()));
  EXPECT_TRUE(Signalled(chained->get()));
}

TEST_F(FenceTest, BadSyncFilesAndAccessAreRefused) {
  halloc::Buffer buf = AsBuffer(4096);
  EXPECT_EQ(buf.ExportSyncFile(halloc::Access::kNone).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Not a sync_file: the kernel says EINVAL.
  halloc::UniqueFd not_a_fence(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(buf.ImportSyncFile(not_a_fence, halloc::Access::kRead).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace halloc_test
