// V4L2 capture from vivid (the stand-in for a camera) into halloc buffers
// with V4L2_MEMORY_DMABUF: once with vivid's default videobuf2-vmalloc
// (exercises vmap) and once with allocators=1, videobuf2-dma-contig
// (exercises attach/map, which needs one contiguous segment).
#include <errno.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

constexpr int kBuffers = 3;
constexpr int kFrames = 6;

UniqueFd OpenVividCapture() {
  for (int i = 0; i < 64; ++i) {
    std::string path = "/dev/video" + std::to_string(i);
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    if (!fd.valid()) continue;
    v4l2_capability cap = {};
    if (Ioctl(fd.get(), VIDIOC_QUERYCAP, &cap) != 0) continue;
    uint32_t caps = (cap.capabilities & V4L2_CAP_DEVICE_CAPS) ? cap.device_caps
                                                               : cap.capabilities;
    if (std::string(reinterpret_cast<char*>(cap.driver)) == "vivid" &&
        (caps & V4L2_CAP_VIDEO_CAPTURE) && (caps & V4L2_CAP_STREAMING))
      return fd;
  }
  return UniqueFd();
}

// Reloads vivid with the given allocator; true on success.
bool ReloadVivid(const std::string& allocators, std::string* why) {
  const std::string ko = Env("VIVID_KO");
  if (ko.empty()) {
    *why = "VIVID_KO not set (run through tools/kernel-test.sh)";
    return false;
  }
  int ret = -EAGAIN;
  for (int i = 0; i < 50 && (ret == -EAGAIN || ret == -EBUSY); ++i) {
    ret = DeleteModule("vivid");
    if (ret == -EAGAIN || ret == -EBUSY)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (ret != 0 && ret != -ENOENT) {
    *why = std::string("rmmod vivid: ") + strerror(-ret);
    return false;
  }
  std::string params = Env("VIVID_PARAMS") + " allocators=" + allocators;
  ret = LoadModule(ko, params);
  if (ret != 0) {
    *why = "insmod vivid " + params + ": " + strerror(-ret);
    return false;
  }
  return true;
}

class VividTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    OpenDevice();
  }

  void OpenDevice() {
    video_ = OpenVividCapture();
    if (!video_.valid()) GTEST_SKIP() << "no vivid capture device (modprobe vivid)";
    v4l2_format fmt = {};
    fmt.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    fmt.fmt.pix.width = 640;
    fmt.fmt.pix.height = 480;
    fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_YUYV;
    fmt.fmt.pix.field = V4L2_FIELD_NONE;
    ASSERT_EQ(Ioctl(video_.get(), VIDIOC_S_FMT, &fmt), 0);
    ASSERT_GT(fmt.fmt.pix.sizeimage, 0u);
    frame_size_ = fmt.fmt.pix.sizeimage;
  }

  // REQBUFS; 0 or -errno.
  int RequestBuffers(uint32_t count) {
    v4l2_requestbuffers req = {};
    req.count = count;
    req.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    req.memory = V4L2_MEMORY_DMABUF;
    return Ioctl(video_.get(), VIDIOC_REQBUFS, &req);
  }

  // QBUF of a dma-buf; 0 or -errno.
  int Queue(uint32_t index, int dmabuf_fd, size_t len) {
    v4l2_buffer b = {};
    b.index = index;
    b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = V4L2_MEMORY_DMABUF;
    b.m.fd = dmabuf_fd;
    b.length = static_cast<uint32_t>(len);
    return Ioctl(video_.get(), VIDIOC_QBUF, &b);
  }

  // Waits for a frame; its index or -errno.
  int Dequeue(uint32_t* bytesused) {
    pollfd p = {video_.get(), POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return -ETIMEDOUT;
    v4l2_buffer b = {};
    b.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = V4L2_MEMORY_DMABUF;
    int ret = Ioctl(video_.get(), VIDIOC_DQBUF, &b);
    if (ret) return ret;
    *bytesused = b.bytesused;
    return static_cast<int>(b.index);
  }

  int StreamOn(bool on) {
    int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    return Ioctl(video_.get(), on ? VIDIOC_STREAMON : VIDIOC_STREAMOFF, &type);
  }

  // Captures kFrames frames into kBuffers buffers from `heap` and checks
  // that they hold vivid's test pattern. expect_vmap: vb2-vmalloc.
  void CaptureInto(Heap heap, bool expect_vmap) {
    CaptureIntoBuffers([&] { return Alloc(heap, frame_size_); }, expect_vmap);
  }

  // The same with buffers from `alloc` (frame_size_ bytes each).
  void CaptureIntoBuffers(const std::function<UniqueFd()>& alloc, bool expect_vmap) {
    ASSERT_EQ(RequestBuffers(kBuffers), 0);
    std::vector<UniqueFd> bufs;
    for (int i = 0; i < kBuffers; ++i) {
      bufs.push_back(alloc());
      ASSERT_TRUE(bufs.back().valid());
      ASSERT_EQ(Queue(i, bufs.back().get(), PageAlign(frame_size_)), 0);
    }
    halloc_buffer_info info = InfoOf(bufs[0].get());
    if (expect_vmap) {
      EXPECT_EQ(info.vmaps, 1u) << "vb2-vmalloc vmaps a queued dma-buf";
    } else {
      EXPECT_EQ(info.attachments, 1u);
      EXPECT_EQ(info.maps, 1u) << "vb2-dma-contig maps a queued dma-buf";
    }
    std::string dbg = ReadFile("/sys/kernel/debug/halloc/buffers");
    RecordProperty("debugfs", dbg);

    ASSERT_EQ(StreamOn(true), 0);
    for (int f = 0; f < kFrames; ++f) {
      SCOPED_TRACE("frame " + std::to_string(f));
      uint32_t used = 0;
      int index = Dequeue(&used);
      ASSERT_GE(index, 0) << strerror(-index);
      ASSERT_LT(index, kBuffers);
      EXPECT_EQ(used, frame_size_);
      const int fd = bufs[index].get();
      Mapping m = Map(fd, PageAlign(frame_size_), PROT_READ);
      ASSERT_TRUE(m.valid()) << strerror(errno);
      ASSERT_EQ(Sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), 0);
      size_t nonzero = std::count_if(m.data(), m.data() + frame_size_,
                                     [](uint8_t b) { return b != 0; });
      // Colour bars in YUYV: chroma is 0x80-ish, luma mostly non-zero; a
      // frame of zeros (nothing written) would fail this.
      EXPECT_GT(nonzero, frame_size_ / 2) << "frame looks empty";
      std::vector<uint8_t> distinct(m.data(), m.data() + std::min<size_t>(frame_size_, 2560));
      std::sort(distinct.begin(), distinct.end());
      EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 4)
          << "not a test pattern";
      ASSERT_EQ(Sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ), 0);
      ASSERT_EQ(Queue(index, fd, PageAlign(frame_size_)), 0);
    }
    ASSERT_EQ(StreamOn(false), 0);
    ASSERT_EQ(RequestBuffers(0), 0);
    info = InfoOf(bufs[0].get());
    EXPECT_EQ(info.vmaps + info.attachments + info.maps, 0u)
        << "vivid released the buffer";
  }

  UniqueFd video_;
  uint32_t frame_size_ = 0;
};

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
  ASSERT_EQ(RequestBuffers(1), 0);
  const size_t len = PageAlign(frame_size_);
  UniqueFd buf = Alloc(Heap::kSystem, frame_size_);
  ASSERT_TRUE(buf.valid());
  Mapping owner = Map(buf.get(), len);
  ASSERT_TRUE(owner.valid());
  memset(owner.data(), 0x5a, len);
  UniqueFd view(MakeView(ctl_.get(), buf.get(), ViewSpec{}));
  ASSERT_TRUE(view.valid());
  ASSERT_EQ(Revoke(ctl_.get(), buf.get(), InfoOf(view.get()).view_id), 0);

  ASSERT_EQ(Queue(0, view.get(), len), 0) << "vmap of a revoked view";
  EXPECT_EQ(InfoOf(buf.get()).vmaps, 0u) << "the buffer's pages are not mapped";
  ASSERT_EQ(StreamOn(true), 0);
  uint32_t used = 0;
  ASSERT_EQ(Dequeue(&used), 0);
  ASSERT_EQ(StreamOn(false), 0);
  ASSERT_EQ(RequestBuffers(0), 0);
  EXPECT_TRUE(AllBytesAre(owner.data(), len, 0x5a))
      << "vivid wrote into the buffer through a revoked view";
}

// A view without CPU access has no vmap: vb2-vmalloc (which reads and
// writes frames with the CPU) cannot take it. QBUF fails cleanly, with no
// WARN from the dma-buf core (the harness fails on any splat), and nothing
// stays mapped or attached; the same buffer through a read-write view works.
TEST_F(VividTest, VmallocRefusesNoCpuView) {
  ASSERT_EQ(RequestBuffers(1), 0);
  UniqueFd buf = Alloc(Heap::kSystem, frame_size_);
  ASSERT_TRUE(buf.valid());
  ViewSpec spec;
  spec.cpu = HALLOC_CPU_NONE;
  UniqueFd view(MakeView(ctl_.get(), buf.get(), spec));
  ASSERT_TRUE(view.valid());
  EXPECT_FALSE(Map(view.get(), PageAlign(frame_size_), PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
  const int queued = Queue(0, view.get(), PageAlign(frame_size_));
  EXPECT_NE(queued, 0) << "vb2-vmalloc vmapped a CPU-none view";
  RecordProperty("qbuf_errno", std::to_string(-queued));
  halloc_buffer_info info = InfoOf(buf.get());
  EXPECT_EQ(info.vmaps, 0u);
  EXPECT_EQ(info.attachments, 0u);
  ASSERT_EQ(RequestBuffers(0), 0);
  ASSERT_EQ(RequestBuffers(1), 0);
  ASSERT_EQ(Queue(0, buf.get(), PageAlign(frame_size_)), 0);
  EXPECT_EQ(InfoOf(buf.get()).vmaps, 1u);
  ASSERT_EQ(RequestBuffers(0), 0);
}

class VividContigTest : public VividTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    std::string why;
    if (!ReloadVivid("1", &why)) GTEST_SKIP() << why;
    reloaded_ = true;
    OpenDevice();
  }
  void TearDown() override {
    video_.reset();
    std::string why;
    if (reloaded_) {
      EXPECT_TRUE(ReloadVivid("0", &why)) << why;
    }
  }
  bool reloaded_ = false;
};

TEST_F(VividContigTest, CaptureIntoContigHeap) {
  CaptureInto(Heap::kContig, /*expect_vmap=*/false);
}

// The camera integration end to end: a client whose policy lets it attach
// buffers only to vivid asks hallocd for camera buffers; hallocd takes them
// from halloc-contig (vivid needs contiguous memory) and hands out views
// that only vivid may attach; vivid captures its test pattern into them.
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

  CaptureIntoBuffers(
      [&]() -> UniqueFd {
        absl::StatusOr<halloc::Buffer> b = camera->Allocate(halloc::BlobDescriptor(
            frame_size_, kCameraOutput | kCpuReadOften, "camera-frame"));
        EXPECT_TRUE(b.ok()) << b.status();
        if (!b.ok()) return UniqueFd();
        const halloc_buffer_info info = InfoOf(b->fd());
        EXPECT_STREQ(info.heap, HALLOC_HEAP_CONTIG);
        EXPECT_EQ(info.segments, 1u);
        EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
        EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
        EXPECT_NE(info.flags & HALLOC_VIEW_RESTRICT_ATTACH, 0u);
        absl::StatusOr<halloc::UniqueFd> fd = b->TakeFd();
        EXPECT_TRUE(fd.ok()) << fd.status();
        return fd.ok() ? UniqueFd(fd->release()) : UniqueFd();
      },
      /*expect_vmap=*/false);
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

}  // namespace
}  // namespace halloc_test
