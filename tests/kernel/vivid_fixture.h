// Test fixtures for V4L2 capture from vivid (the stand-in for a camera)
// into halloc buffers with V4L2_MEMORY_DMABUF: VividTest with vivid's
// default videobuf2-vmalloc (exercises vmap), VividContigTest with vivid
// reloaded as allocators=1, videobuf2-dma-contig (exercises attach/map,
// which needs one contiguous segment).
#ifndef HALLOC_TESTS_KERNEL_VIVID_FIXTURE_H_
#define HALLOC_TESTS_KERNEL_VIVID_FIXTURE_H_

#include <errno.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {

inline constexpr int kBuffers = 3;
inline constexpr int kFrames = 6;

inline UniqueFd OpenVividCapture() {
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

// The first vivid capture node's path (single- or multi-planar API), or "".
inline std::string VividCapturePath() {
  for (int i = 0; i < 64; ++i) {
    const std::string path = "/dev/video" + std::to_string(i);
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    if (!fd.valid()) continue;
    v4l2_capability cap = {};
    if (Ioctl(fd.get(), VIDIOC_QUERYCAP, &cap) != 0) continue;
    const uint32_t caps = (cap.capabilities & V4L2_CAP_DEVICE_CAPS)
                              ? cap.device_caps
                              : cap.capabilities;
    if (std::string(reinterpret_cast<char*>(cap.driver)) == "vivid" &&
        (caps & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE)))
      return path;
  }
  return "";
}

// vivid's default test pattern, 75% colour bars, left to right: white,
// yellow, cyan, green, magenta, red, blue, black, each 1/8 of the width;
// in its RGB formats (XR24: full range) exactly these 0xRRGGBB colours.
inline constexpr int kVividBars = 8;
inline constexpr uint32_t kVividBarRgb[kVividBars] = {
    0xbfbfbf, 0xbfbf00, 0x00bfbf, 0x00bf00, 0xbf00bf, 0xbf0000, 0x0000bf, 0x000000};

// A pixel classified by which channels are lit: its bar index (0 white ...
// 7 black, vivid's order), or -1 if a channel is neither clearly on
// (> 150) nor clearly off (< 60).
inline int VividBar(uint8_t r, uint8_t g, uint8_t b) {
  int bits = 0;
  for (uint8_t v : {r, g, b}) {
    if (v > 150) {
      bits = bits * 2 + 1;
    } else if (v < 60) {
      bits = bits * 2;
    } else {
      return -1;
    }
  }
  // r g b → bar: 111 white, 110 yellow, 011 cyan, 010 green, 101 magenta,
  // 100 red, 001 blue, 000 black.
  constexpr int kBarOfBits[8] = {7, 6, 3, 2, 5, 4, 1, 0};
  return kBarOfBits[bits];
}

// Reloads vivid with the given allocator; true on success.
inline bool ReloadVivid(const std::string& allocators, std::string* why) {
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

  // vb2-vmalloc captures one frame through a view of a buffer filled with
  // 0x5a (`make_view`: the view, from the buffer's fd) and the buffer is
  // checked untouched: the capture went to a scratch page.
  void CaptureMissesTheBuffer(const std::function<UniqueFd(int)>& make_view, const char* what,
                              Heap heap = Heap::kSystem) {
    ASSERT_EQ(RequestBuffers(1), 0);
    const size_t len = PageAlign(frame_size_);
    UniqueFd buf = Alloc(heap, frame_size_);
    ASSERT_TRUE(buf.valid());
    Mapping owner = Map(buf.get(), len);
    ASSERT_TRUE(owner.valid());
    memset(owner.data(), 0x5a, len);
    UniqueFd view = make_view(buf.get());
    ASSERT_TRUE(view.valid());
    ASSERT_EQ(Queue(0, view.get(), len), 0) << "vmap of " << what;
    EXPECT_EQ(InfoOf(buf.get()).vmaps, 0u) << "the buffer's pages are not mapped";
    ASSERT_EQ(StreamOn(true), 0);
    uint32_t used = 0;
    ASSERT_EQ(Dequeue(&used), 0);
    ASSERT_EQ(StreamOn(false), 0);
    ASSERT_EQ(RequestBuffers(0), 0);
    EXPECT_TRUE(AllBytesAre(owner.data(), len, 0x5a))
        << "vivid wrote into the buffer through " << what;
  }

  UniqueFd video_;
  uint32_t frame_size_ = 0;
};

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

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_VIVID_FIXTURE_H_
