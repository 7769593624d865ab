// V4L2 capture from vivid (the stand-in for a camera) into halloc buffers
// with V4L2_MEMORY_DMABUF: once with vivid's default videobuf2-vmalloc
// (exercises vmap) and once with allocators=1, videobuf2-dma-contig
// (exercises attach/map, which needs one contiguous segment). Fixtures in
// vivid_fixture.h.
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"
#include "tests/kernel/vivid_fixture.h"

namespace halloc_test {
namespace {

TEST_F(VividTest, VmallocCaptureIntoSystemHeap) {
  CaptureInto(Heap::kSystem, /*expect_vmap=*/true);
}

TEST_F(VividTest, VmallocCaptureIntoContigHeap) {
  CaptureInto(Heap::kContig, /*expect_vmap=*/true);
}

// A revoked view cannot fail a kernel vmap cleanly (6.1's dma_buf_vmap
// WARNs), so vb2-vmalloc, which never attaches, gets a private scratch
// mapping: it captures into that, and the buffer itself is never written.
// (VmallocCaptureIntoSystemHeap shows the same capture does reach an
// unrevoked buffer.)
TEST_F(VividTest, VmallocCapturesRevokedViewIntoScratch) {
  CaptureMissesTheBuffer(
      [&](int buf) {
        UniqueFd view(MakeView(ctl_.get(), buf, ViewSpec{}));
        EXPECT_EQ(Revoke(ctl_.get(), buf, InfoOf(view.get()).view_id), 0);
        return view;
      },
      "a revoked view");
}

// A view restricted to some drivers reaches a kernel importer's vmap only
// while a listed device has attached it. vb2-vmalloc never attaches (and
// names no device), so whatever the list says it gets the scratch page a
// revoked view gets, and the buffer is never written. Before, it captured
// into the pages of a view that no unlisted device was to reach.
// (VividContigTest.CapturesIntoBuffersFromHallocd: vivid's dma-contig,
// which attaches first, captures into restricted views.)
TEST_F(VividTest, VmallocCapturesRestrictedViewIntoScratch) {
  CaptureMissesTheBuffer(
      [&](int buf) {
        ViewSpec spec;
        spec.cpu = HALLOC_CPU_READ;
        spec.restrict_attach = true;
        spec.drivers = {"vivid"};
        return UniqueFd(MakeView(ctl_.get(), buf, spec));
      },
      "a restricted view no listed device attached");
}

// A view without CPU access vmaps the scratch page a revoked view gets:
// vb2-vmalloc (which reads and writes frames with the CPU) captures into
// that, and the buffer is never written; the view itself never maps.
TEST_F(VividTest, VmallocCapturesNoCpuViewIntoScratch) {
  CaptureMissesTheBuffer(
      [&](int buf) {
        ViewSpec spec;
        spec.cpu = HALLOC_CPU_NONE;
        UniqueFd view(MakeView(ctl_.get(), buf, spec));
        EXPECT_FALSE(Map(view.get(), PageAlign(frame_size_), PROT_READ).valid());
        EXPECT_EQ(errno, EPERM);
        return view;
      },
      "a view without CPU access");
}

TEST_F(VividContigTest, CaptureIntoContigHeap) {
  CaptureInto(Heap::kContig, /*expect_vmap=*/false);
}

// vivid with videobuf2-dma-contig attaches and maps a view without CPU
// access, then fills each frame with the CPU through vb2_plane_vaddr(),
// without checking it: that vmap gets the scratch page, so the capture
// thread writes there and the buffer is never written. Before, the view
// had no vmap, vivid wrote through NULL (an oops in its capture thread,
// vivid's lock left held) and the client's poll never returned.
TEST_F(VividContigTest, NoCpuViewCapturesIntoScratch) {
  CaptureMissesTheBuffer(
      [&](int buf) {
        ViewSpec spec;
        spec.cpu = HALLOC_CPU_NONE;
        return UniqueFd(MakeView(ctl_.get(), buf, spec));
      },
      "a view without CPU access", Heap::kContig);
}

// The camera integration end to end: a client whose policy lets it attach
// buffers only to vivid asks hallocd for camera buffers; hallocd takes them
// from halloc-deferred and hands out views that only vivid may attach; the
// kernel backs them with one contiguous run when vivid (dma-contig) maps
// them at QBUF, and vivid captures its test pattern into them.
TEST_F(VividContigTest, CapturesIntoBuffersFromHallocd) {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> daemon =
      StartDaemon("halloc", R"(
    clients {
      name: "camera"
      match { uids: 0 }
      usages: "camera_output" usages: "cpu_read_often"
      heaps: "halloc"
      max_cpu_access: CPU_ACCESS_READ
      attach_devices: "vivid"
    })");
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<halloc::Client> camera = (*daemon)->Connect();
  ASSERT_TRUE(camera.ok()) << camera.status();
  constexpr uint64_t kCameraOutput = 1 << 17, kCpuReadOften = 0x3;

  std::vector<UniqueFd> keep;
  CaptureIntoBuffers(
      [&]() -> UniqueFd {
        absl::StatusOr<halloc::Buffer> b = camera->Allocate(halloc::BlobDescriptor(
            frame_size_, kCameraOutput | kCpuReadOften, "camera-frame"));
        EXPECT_TRUE(b.ok()) << b.status();
        if (!b.ok()) return UniqueFd();
        const halloc_buffer_info info = InfoOf(b->fd());
        EXPECT_STREQ(info.heap, HALLOC_HEAP_DEFERRED);
        EXPECT_NE(info.flags & HALLOC_INFO_NOT_BACKED, 0u);
        EXPECT_EQ(info.segments, 0u);
        EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
        keep.emplace_back(dup(b->fd()));
        EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
        EXPECT_NE(info.flags & HALLOC_VIEW_RESTRICT_ATTACH, 0u);
        absl::StatusOr<halloc::UniqueFd> fd = b->TakeFd();
        EXPECT_TRUE(fd.ok()) << fd.status();
        return fd.ok() ? UniqueFd(fd->release()) : UniqueFd();
      },
      /*expect_vmap=*/false);
  for (const UniqueFd& fd : keep) {
    const halloc_buffer_info info = InfoOf(fd.get());
    EXPECT_EQ(info.segments, 1u) << "backed for vivid: one contiguous run";
    EXPECT_NE(info.flags & HALLOC_INFO_BELOW_4G, 0u);
  }
}

TEST_F(VividContigTest, ScatteredBufferRefusedCleanly) {
  ASSERT_EQ(RequestBuffers(1), 0);
  UniqueFd buf = Alloc(Heap::kSystem, frame_size_);
  ASSERT_TRUE(buf.valid());
  if (InfoOf(buf.get()).segments < 2)
    GTEST_SKIP() << "the system heap happened to return contiguous pages";
  EXPECT_EQ(Queue(0, buf.get(), PageAlign(frame_size_)), -EBUSY);
  halloc_buffer_info info = InfoOf(buf.get());
  EXPECT_EQ(info.attachments, 0u);
  EXPECT_EQ(info.maps, 0u);
  // A contiguous buffer in the same slot still works afterwards.
  UniqueFd good = Alloc(Heap::kContig, frame_size_);
  ASSERT_TRUE(good.valid());
  EXPECT_EQ(Queue(0, good.get(), PageAlign(frame_size_)), 0);
  ASSERT_EQ(RequestBuffers(0), 0);
}

// vivid's device has a 32-bit DMA mask and no IOMMU: pages above 4 GiB are
// refused at attach (EBUSY) rather than bounced. tools/kernel-test.sh gives
// the guest RAM above 4 GiB, where the system heap allocates first.
TEST_F(VividContigTest, UnreachableDmaMaskRefusedCleanly) {
  ASSERT_EQ(RequestBuffers(1), 0);
  // 1 MiB from the system heap is one order-8 chunk, one segment: only the
  // DMA mask can make attach refuse it.
  const size_t size = std::max<size_t>(1 << 20, PageAlign(frame_size_));
  UniqueFd buf = Alloc(Heap::kSystem, size);
  ASSERT_TRUE(buf.valid());
  halloc_buffer_info info = InfoOf(buf.get());
  if (info.segments != 1) GTEST_SKIP() << "no free 1 MiB chunk";
  if (info.flags & HALLOC_INFO_BELOW_4G)
    GTEST_SKIP() << "pages below 4 GiB: the guest has no RAM above 4 GiB";
  EXPECT_EQ(Queue(0, buf.get(), size), -EBUSY);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 0u);
  // halloc-contig stays below 4 GiB by default, so vivid can use it.
  UniqueFd low = Alloc(Heap::kContig, size);
  ASSERT_TRUE(low.valid());
  ASSERT_TRUE(InfoOf(low.get()).flags & HALLOC_INFO_BELOW_4G);
  EXPECT_EQ(Queue(0, low.get(), size), 0);
  ASSERT_EQ(RequestBuffers(0), 0);
}

TEST_F(VividContigTest, AttachRightsEnforced) {
  ASSERT_EQ(RequestBuffers(1), 0);
  UniqueFd buf = Alloc(Heap::kContig, frame_size_);
  ASSERT_TRUE(buf.valid());
  ViewSpec vgem_only;
  vgem_only.restrict_attach = true;
  vgem_only.drivers = {"vgem"};
  UniqueFd refused(MakeView(ctl_.get(), buf.get(), vgem_only));
  ASSERT_TRUE(refused.valid());
  EXPECT_EQ(Queue(0, refused.get(), PageAlign(frame_size_)), -EPERM);

  ViewSpec camera = vgem_only;
  camera.drivers = {"vivid"};
  camera.cpu = HALLOC_CPU_READ;
  UniqueFd allowed(MakeView(ctl_.get(), buf.get(), camera));
  ASSERT_TRUE(allowed.valid());
  EXPECT_EQ(Queue(0, allowed.get(), PageAlign(frame_size_)), 0);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 1u);
  ASSERT_EQ(RequestBuffers(0), 0);
}

// A device attachment made before a revoke cannot be torn down under a
// static importer: videobuf2-dma-contig keeps the mapping it took at the
// first QBUF for as long as the buffer stays set up (STREAMOFF and a QBUF
// of the same dma-buf again reuse it; it never maps again). Once vb2 lets
// it go (REQBUFS 0), queueing the revoked view is refused at attach
// (ENODEV), while the original still queues.
TEST_F(VividContigTest, RevokedViewKeepsAStaticMappingUntilDetached) {
  ASSERT_EQ(RequestBuffers(1), 0);
  const size_t len = PageAlign(frame_size_);
  UniqueFd buf = Alloc(Heap::kContig, frame_size_);
  ASSERT_TRUE(buf.valid());
  UniqueFd view(MakeView(ctl_.get(), buf.get(), ViewSpec{}));
  ASSERT_TRUE(view.valid());
  ASSERT_EQ(Queue(0, view.get(), len), 0);
  EXPECT_EQ(InfoOf(buf.get()).maps, 1u);
  ASSERT_EQ(Revoke(ctl_.get(), buf.get(), InfoOf(view.get()).view_id), 0);
  EXPECT_EQ(InfoOf(buf.get()).maps, 1u) << "the static importer keeps its map";

  ASSERT_EQ(StreamOn(true), 0);
  uint32_t used = 0;
  ASSERT_EQ(Dequeue(&used), 0);
  ASSERT_EQ(StreamOn(false), 0);
  EXPECT_EQ(Queue(0, view.get(), len), 0) << "vb2 reuses its mapping";
  ASSERT_EQ(RequestBuffers(0), 0);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 0u);
  ASSERT_EQ(RequestBuffers(1), 0);
  EXPECT_EQ(Queue(0, view.get(), len), -ENODEV);
  EXPECT_EQ(InfoOf(buf.get()).attachments, 0u);
  EXPECT_EQ(Queue(0, buf.get(), len), 0) << "the original is untouched";
  ASSERT_EQ(RequestBuffers(0), 0);
}

}  // namespace
}  // namespace halloc_test
