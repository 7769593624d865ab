// PRIME import of halloc buffers into vgem (the stand-in for a GPU or a
// display) through libdrm.
#include <dirent.h>
#include <drm.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <xf86drm.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "clients/compositor/drm_device.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {

namespace {

TEST_F(VgemTest, ImportsUnrestrictedBuffer) {
  for (Heap heap : {Heap::kSystem, Heap::kContig}) {
    SCOPED_TRACE(HeapName(heap));
    UniqueFd buf = Alloc(heap, 256 * 1024);
    ASSERT_TRUE(buf.valid());
    int64_t h = Import(vgem_.get(), buf.get());
    ASSERT_GT(h, 0) << strerror(int(-h));
    {
      GemHandle handle(vgem_.get(), uint32_t(h));
      halloc_buffer_info info = InfoOf(buf.get());
      EXPECT_EQ(info.attachments, 1u);
      EXPECT_EQ(info.maps, 1u) << "drm maps the attachment at import";
      std::string dbg = ReadFile("/sys/kernel/debug/halloc/buffers");
      EXPECT_NE(dbg.find("attached: vgem (vgem)"), std::string::npos) << dbg;
      EXPECT_NE(dbg.find(" mapped\n"), std::string::npos) << dbg;
      // Importing again gives the same handle (PRIME caches the import).
      EXPECT_EQ(Import(vgem_.get(), buf.get()), h);
    }
    halloc_buffer_info info = InfoOf(buf.get());
    EXPECT_EQ(info.attachments, 0u);
    EXPECT_EQ(info.maps, 0u);
  }
}

// Two PRIME imports of one buffer into one DRM file get one handle (the
// kernel caches the import). The compositor's DrmDevice counts it: the
// first to let go leaves the second a live handle, and the last closes it.
// Closed at the first, its number went to the next import or dumb buffer,
// whose handle the second then closed.
TEST_F(VgemTest, TheHandleTwoImportsShareIsCountedByTheCompositor) {
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  UniqueFd node = OpenVgem();  // a DRM file of its own
  ASSERT_TRUE(node.valid());
  const int drm = node.get();
  halloc::compositor::DrmDevice device(halloc::UniqueFd(node.release()), "vgem");
  absl::StatusOr<uint32_t> first = device.ImportHandle(buf.get());
  absl::StatusOr<uint32_t> second = device.ImportHandle(buf.get());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(*first, *second);
  device.ReleaseHandle(*first);
  // Still open: a dumb buffer made now gets another number, and the handle
  // still names the buffer.
  const int64_t dumb = CreateDumb(drm, 64, 64, 32);
  ASSERT_GT(dumb, 0) << strerror(int(-dumb));
  GemHandle dumb_handle(drm, uint32_t(dumb));
  EXPECT_NE(uint32_t(dumb), *second);
  int exported = -1;
  EXPECT_EQ(drmPrimeHandleToFD(drm, *second, DRM_CLOEXEC, &exported), 0)
      << "the first release closed the handle the second import holds";
  if (exported >= 0) ::close(exported);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 1u);
  // The last release closes it: vgem lets the buffer go.
  device.ReleaseHandle(*second);
  exported = -1;
  EXPECT_NE(drmPrimeHandleToFD(drm, *second, DRM_CLOEXEC, &exported), 0);
  if (exported >= 0) ::close(exported);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 0u);
}

TEST_F(VgemTest, ViewAllowingVgemImports) {
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  ViewSpec spec;
  spec.cpu = HALLOC_CPU_NONE;
  spec.restrict_attach = true;
  spec.drivers = {"vivid", "vgem"};
  UniqueFd view(MakeView(ctl_.get(), buf.get(), spec));
  ASSERT_TRUE(view.valid()) << strerror(-view.get());
  int64_t h = Import(vgem_.get(), view.get());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle handle(vgem_.get(), uint32_t(h));
  EXPECT_EQ(InfoOf(buf.get()).attachments, 1u);
}

TEST_F(VgemTest, ViewNotAllowingVgemIsRefused) {
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  ViewSpec vivid_only;
  vivid_only.restrict_attach = true;
  vivid_only.drivers = {"vivid"};
  ViewSpec nobody;
  nobody.restrict_attach = true;
  for (const ViewSpec& spec : {vivid_only, nobody}) {
    UniqueFd view(MakeView(ctl_.get(), buf.get(), spec));
    ASSERT_TRUE(view.valid()) << strerror(-view.get());
    EXPECT_EQ(Import(vgem_.get(), view.get()), -EPERM);
  }
  EXPECT_EQ(InfoOf(buf.get()).attachments, 0u);
}

// Pixels written through the halloc mapping are what vgem sees, and the
// other way round. vgem cannot hand out a mapping of an imported object
// itself on this kernel (drm_gem_dumb_map_offset refuses imports), so its
// side of the check goes through the dma-buf that vgem exports back for the
// handle: that must be the very same buffer, found through vgem.
TEST_F(VgemTest, PixelsVisibleThroughBothMappings) {
  const size_t size = 640 * 480 * 4;
  UniqueFd buf = Alloc(Heap::kSystem, size);
  ASSERT_TRUE(buf.valid());
  Mapping mine = Map(buf.get(), PageAlign(size));
  ASSERT_TRUE(mine.valid()) << strerror(errno);
  ASSERT_EQ(Sync(buf.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), 0);
  auto* px = reinterpret_cast<uint32_t*>(mine.data());
  for (size_t i = 0; i < size / 4; ++i) px[i] = 0xff000000u | uint32_t(i * 2654435761u >> 8);
  ASSERT_EQ(Sync(buf.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE), 0);

  int64_t h = Import(vgem_.get(), buf.get());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle handle(vgem_.get(), uint32_t(h));

  Mapping theirs;
  drm_mode_map_dumb map_args = {};
  map_args.handle = handle.get();
  if (drmIoctl(vgem_.get(), DRM_IOCTL_MODE_MAP_DUMB, &map_args) == 0) {
    RecordProperty("vgem_side", "DRM_IOCTL_MODE_MAP_DUMB mmap of the handle");
    theirs = Map(vgem_.get(), PageAlign(size), PROT_READ | PROT_WRITE, MAP_SHARED,
                 off_t(map_args.offset));
    ASSERT_TRUE(theirs.valid()) << "mmap of vgem handle: " << strerror(errno);
  } else {
    RecordProperty("vgem_side", "dma-buf exported back by vgem for the handle");
    int exported = -1;
    ASSERT_EQ(drmPrimeHandleToFD(vgem_.get(), handle.get(), DRM_CLOEXEC | DRM_RDWR,
                                 &exported), 0) << strerror(errno);
    UniqueFd back(exported);
    halloc_buffer_info info = InfoOf(back.get());
    EXPECT_EQ(info.id, InfoOf(buf.get()).id);
    theirs = Map(back.get(), PageAlign(size));
    ASSERT_TRUE(theirs.valid()) << strerror(errno);
  }
  auto* other = reinterpret_cast<uint32_t*>(theirs.data());
  ASSERT_EQ(memcmp(other, px, size), 0);
  other[12345] = 0x12345678;
  EXPECT_EQ(px[12345], 0x12345678u);
}

// What vgem hands back for an imported view is that view, rights and all:
// a consumer cannot launder a restricted fd through the GPU.
TEST_F(VgemTest, ReexportKeepsTheViewsRights) {
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  ViewSpec spec;
  spec.cpu = HALLOC_CPU_NONE;
  spec.restrict_attach = true;
  spec.drivers = {"vgem"};
  UniqueFd view(MakeView(ctl_.get(), buf.get(), spec));
  ASSERT_TRUE(view.valid());
  int64_t h = Import(vgem_.get(), view.get());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle handle(vgem_.get(), uint32_t(h));
  int exported = -1;
  ASSERT_EQ(drmPrimeHandleToFD(vgem_.get(), handle.get(), DRM_CLOEXEC | DRM_RDWR,
                               &exported), 0) << strerror(errno);
  UniqueFd back(exported);
  halloc_buffer_info info = InfoOf(back.get());
  EXPECT_TRUE(info.flags & HALLOC_INFO_IS_VIEW);
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_NONE);
  EXPECT_FALSE(Map(back.get(), 64 * 1024, PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(Sync(back.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), -EPERM);
}

// One buffer takes at most max_attachments attachments at once, through
// any of its fds (each holds a scatterlist as long as the buffer's): one
// more is ENOSPC, and a detach makes room. Each DRM file imports apart.
TEST_F(VgemTest, ABufferTakesAtMostMaxAttachmentsAttachments) {
  ScopedParam cap("max_attachments", "3");
  ASSERT_TRUE(cap.ok());
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  UniqueFd view(MakeView(ctl_.get(), buf.get(), {}));
  ASSERT_TRUE(view.valid());
  std::vector<UniqueFd> files;
  std::vector<std::unique_ptr<GemHandle>> handles;
  for (int i = 0; i < 3; ++i) {
    files.push_back(OpenVgem());
    ASSERT_TRUE(files.back().valid());
    const int64_t h = Import(files.back().get(), (i % 2 ? view : buf).get());
    ASSERT_GT(h, 0) << i << ": " << strerror(int(-h));
    handles.push_back(std::make_unique<GemHandle>(files.back().get(), uint32_t(h)));
  }
  EXPECT_EQ(InfoOf(buf.get()).attachments, 3u);
  UniqueFd fourth = OpenVgem();
  ASSERT_TRUE(fourth.valid());
  EXPECT_EQ(Import(fourth.get(), view.get()), -ENOSPC);
  EXPECT_EQ(Import(fourth.get(), buf.get()), -ENOSPC);
  handles.pop_back();  // the last import's only handle: detached
  const int64_t h = Import(fourth.get(), buf.get());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle again(fourth.get(), uint32_t(h));
  EXPECT_EQ(InfoOf(buf.get()).attachments, 3u);

  // A revoked view's attachments (kept until its importer lets go) leave
  // the others their room: the owner cuts off whoever filled it.
  UniqueFd fifth = OpenVgem();
  ASSERT_TRUE(fifth.valid());
  EXPECT_EQ(Import(fifth.get(), buf.get()), -ENOSPC);
  ASSERT_EQ(Revoke(ctl_.get(), buf.get(), InfoOf(view.get()).view_id), 0);
  const int64_t after = Import(fifth.get(), buf.get());
  ASSERT_GT(after, 0) << strerror(int(-after));
  GemHandle kept(fifth.get(), uint32_t(after));
  EXPECT_EQ(InfoOf(buf.get()).attachments, 4u) << "the revoked one stays until let go";
  handles.clear();  // the revoked view's import goes too (and the first's)
  EXPECT_EQ(InfoOf(buf.get()).attachments, 2u);
}

// A forked child letting go of what it inherited closes nothing of its
// parent's: GEM handles belong to the DRM file, which both share (a child
// that ran its destructors closed the parent's handle, whose number the
// next import then reused). Nor may the child import on it.
TEST_F(VgemTest, AForkedChildsReleaseLeavesItsParentsHandle) {
  UniqueFd buf = Alloc(Heap::kSystem, 64 * 1024);
  ASSERT_TRUE(buf.valid());
  UniqueFd node = OpenVgem();
  ASSERT_TRUE(node.valid());
  halloc::compositor::DrmDevice device(halloc::UniqueFd(node.release()), "vgem");
  absl::StatusOr<uint32_t> h = device.ImportHandle(buf.get());
  ASSERT_TRUE(h.ok()) << h.status();
  const uint32_t handle = *h;
  // No allocation in the child (this process has threads): the release,
  // and whether it would refuse an import (ImportHandle asks Owned()).
  const int status = RunInChild([&] {
    device.ReleaseHandle(handle);
    _exit(device.Owned() ? 3 : 0);
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child would import on its parent's DRM file";
  int exported = -1;
  EXPECT_EQ(drmPrimeHandleToFD(device.fd(), handle, DRM_CLOEXEC, &exported), 0)
      << "the parent's handle was closed: " << strerror(errno);
  if (exported >= 0) close(exported);
  device.ReleaseHandle(handle);
}

TEST_F(VgemTest, VgemBuffersAreNotHallocBuffers) {
  drm_mode_create_dumb create = {};
  create.width = 64;
  create.height = 64;
  create.bpp = 32;
  ASSERT_EQ(drmIoctl(vgem_.get(), DRM_IOCTL_MODE_CREATE_DUMB, &create), 0)
      << strerror(errno);
  GemHandle handle(vgem_.get(), create.handle);
  int exported = -1;
  ASSERT_EQ(drmPrimeHandleToFD(vgem_.get(), handle.get(), DRM_CLOEXEC, &exported), 0);
  UniqueFd foreign(exported);
  halloc_buffer_info info;
  EXPECT_EQ(Info(ctl_.get(), foreign.get(), &info), -EINVAL);
  EXPECT_EQ(MakeView(ctl_.get(), foreign.get(), {}), -EINVAL);
}

}  // namespace
}  // namespace halloc_test
