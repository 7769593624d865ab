// Issue #13's pipeline in the guest: vivid → hallocd → vkms → writeback PNG.
//
// A camera client (//clients/camera on vivid, XRGB8888 640x480) captures
// into buffers hallocd allocated on the module; each frame is shared
// read-only with a second client, the compositor, which imports it (the
// same pages: HALLOC_IOCTL_INFO's id, a read-only view), makes it a KMS
// framebuffer (//clients/compositor: PRIME, AddFB2) and shows it on vkms's
// primary plane, with part of the previous frame cropped onto the overlay
// plane (vkms 6.1's overlay positions and crops but does not scale),
// waiting for the producer's fence and the flip event; a frame goes back to
// the camera once a flip has taken it off the screen. vkms's writeback
// connector then captures the composed output into a hallocd buffer, which
// is written as PNG and checked: vivid's colour bars at their columns
// outside the overlay, the cropped bars inside it, and every pixel equal to
// the frames that were shown.
//
// The same run measures the floor: vivid's own buffers (V4L2_MEMORY_MMAP,
// exported once with VIDIOC_EXPBUF, PRIME-imported into vkms) flipped the
// same way. Both figures are printed and recorded (gtest XML), never
// judged.
#include <drm_fourcc.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/camera/camera.h"
#include "clients/compositor/kms.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/png/png.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"
#include "tests/kernel/vivid_fixture.h"
#include "tests/kernel/vivid_mmap.h"
#include "tests/kernel/vkms_util.h"

namespace halloc_test {
namespace {

namespace hc = ::halloc::compositor;
using ::halloc::Buffer;
using ::halloc::Client;
using ::halloc::camera::Camera;
using ::halloc::camera::CameraOptions;
using ::halloc::camera::Frame;

constexpr uint32_t kWidth = 640, kHeight = 480;
// Frames each loop flips, after one untimed frame (the modeset).
constexpr int kFrames = 30;
// Two frames are on the screen at a time (primary, overlay); the rest are
// vivid's to fill.
constexpr uint32_t kBuffers = 5;
// Asked of vivid (VIDIOC_S_PARM; its webcam would run 640x480 at 5 fps).
constexpr double kFps = 30;
// The overlay: the previous frame's top left corner (its white, yellow and
// cyan bars, and vivid's text from row 16 and column 16 on: its time and
// frame counter), over the current frame's magenta, red, blue and black.
constexpr hc::Rect kCropSrc = {0, 0, 240, 160};
constexpr hc::Rect kOverlayDst = {384, 304, 240, 160};
constexpr uint32_t kTextTop = 16, kTextLeft = 16;  // vivid's text box

// Where a loop's time went, summed over its timed frames.
struct LoopFigures {
  int frames = 0;
  absl::Duration total;        // wall clock, the whole loop
  absl::Duration camera;       // waiting for the camera's next frame
  absl::Duration share;        // Share + Import through hallocd
  absl::Duration checks;       // this test's own checks (INFO ioctls)
  absl::Duration framebuffer;  // PRIME import + AddFB2
  absl::Duration present;      // fence wait, atomic commit, flip event
  absl::Duration retire;       // RmFB, Release, Requeue (QBUF)

  double fps() const { return frames / absl::ToDoubleSeconds(total); }
  // What the loop spends per frame besides waiting for the camera.
  double work_ms() const { return absl::ToDoubleMilliseconds(total - camera - checks) / frames; }
  static double Ms(absl::Duration d, int frames) { return absl::ToDoubleMilliseconds(d) / frames; }
};

// Time since the last Lap.
class Laps {
 public:
  absl::Duration Lap() {
    const absl::Time now = absl::Now();
    return now - std::exchange(last_, now);
  }

 private:
  absl::Time last_ = absl::Now();
};

// A frame the compositor shows: the camera's buffer index, the
// compositor's read-only import and its framebuffer.
struct Shown {
  uint32_t index = 0;
  std::optional<Buffer> view;
  std::optional<hc::Framebuffer> fb;
};

std::string PngPath() {
  const std::string dir = Env("HALLOC_RESULTS");
  return (dir.empty() ? std::string("/tmp") : dir) + "/pipeline.png";
}

bool InOverlay(uint32_t x, uint32_t y) {
  return x >= uint32_t(kOverlayDst.x) && x < kOverlayDst.x + kOverlayDst.width &&
         y >= uint32_t(kOverlayDst.y) && y < kOverlayDst.y + kOverlayDst.height;
}

class PipelineTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    path_ = VividCapturePath();
    if (path_.empty()) GTEST_SKIP() << "no vivid capture device (modprobe vivid)";
    hc::DisplayOptions options;
    options.width = kWidth;
    options.height = kHeight;
    OpenVkms(options, &display_);
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(display_->has_overlay()) << "vkms was loaded without enable_overlay=1";
    ASSERT_TRUE(display_->has_writeback()) << "vkms was loaded without enable_writeback=1";
    absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d = StartDaemon("halloc");
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    absl::StatusOr<Client> camera = daemon_->Connect();
    absl::StatusOr<Client> compositor = daemon_->Connect();
    ASSERT_TRUE(camera.ok()) << camera.status();
    ASSERT_TRUE(compositor.ok()) << compositor.status();
    camera_.emplace(*std::move(camera));
    compositor_.emplace(*std::move(compositor));
  }

  void TearDown() override {
    shown_.clear();
    cam_.reset();
    display_.reset();
    camera_.reset();
    compositor_.reset();
    daemon_.reset();
  }

  // The camera's side of a frame handed to the compositor: shared
  // read-only; the compositor's import of it, checked to be a read-only
  // view of the same pages.
  std::optional<Buffer> ShareAndImport(const Frame& frame, LoopFigures& f, Laps& laps) {
    absl::StatusOr<halloc::v1::Grant> grant =
        cam_->ShareWithUid(frame, getuid(), halloc::v1::CPU_ACCESS_READ);
    EXPECT_TRUE(grant.ok()) << grant.status();
    if (!grant.ok()) return std::nullopt;
    absl::StatusOr<Buffer> view = compositor_->Import(grant->token());
    EXPECT_TRUE(view.ok()) << view.status();
    if (!view.ok()) return std::nullopt;
    f.share += laps.Lap();
    const halloc_buffer_info mine = InfoOf(frame.buffer->fd()), theirs = InfoOf(view->fd());
    EXPECT_EQ(theirs.id, mine.id) << "zero-copy: the compositor holds the camera's pages";
    EXPECT_EQ(theirs.cpu_access, HALLOC_CPU_READ);
    EXPECT_EQ(view->info().cpu_access(), halloc::v1::CPU_ACCESS_READ);
    EXPECT_EQ(view->layout().format(), uint32_t{DRM_FORMAT_XRGB8888});
    EXPECT_EQ(view->layout().width(), kWidth);
    f.checks += laps.Lap();
    return *std::move(view);
  }

  // Takes the oldest shown frame off the books once a flip replaced it:
  // its framebuffer, the compositor's hold, and back to the camera.
  void Retire() {
    Shown old = std::move(shown_.front());
    shown_.pop_front();
    old.fb.reset();
    EXPECT_TRUE(compositor_->Release(old.view->id()).ok());
    old.view.reset();
    absl::Status s = cam_->Requeue(old.index);
    EXPECT_TRUE(s.ok()) << s;
  }

  // vivid → hallocd → vkms, kFrames timed frames after one untimed.
  LoopFigures RunPipeline() {
    CameraOptions o;
    o.device = path_;
    o.format = DRM_FORMAT_XRGB8888;
    o.width = kWidth;
    o.height = kHeight;
    o.buffer_count = kBuffers;
    o.usage = halloc::usage::kComposerOverlay | halloc::usage::kCpuReadRarely;
    o.name = "pipeline-frame";
    o.fps = kFps;
    absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::OpenV4l2(*camera_, o);
    EXPECT_TRUE(cam.ok()) << cam.status();
    if (!cam.ok()) return {};
    cam_ = *std::move(cam);
    for (const Buffer& b : cam_->buffers()) EXPECT_EQ(b.info().backend(), "halloc");
    RecordProperty("camera",
                   absl::StrCat(cam_->Describe(), " ", cam_->format().width, "x",
                                cam_->format().height, " XR24 at ", cam_->format().fps, " fps"));
    absl::Status s = cam_->Start();
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return {};

    LoopFigures f;
    Laps laps;
    absl::Time start = absl::Now();
    uint64_t flips = 0;
    int64_t last_sequence = -1;
    for (int n = 0; n <= kFrames; ++n) {
      SCOPED_TRACE(absl::StrCat("frame ", n));
      absl::StatusOr<Frame> frame = cam_->Next(absl::Seconds(10));
      EXPECT_TRUE(frame.ok()) << frame.status();
      if (!frame.ok()) return {};
      f.camera += laps.Lap();
      EXPECT_GT(int64_t{frame->sequence}, last_sequence);
      last_sequence = frame->sequence;
      EXPECT_EQ(frame->bytesused, cam_->format().sizeimage);
      Shown now;
      now.index = frame->index;
      now.view = ShareAndImport(*frame, f, laps);
      if (!now.view) return {};
      if (n == 0) {
        EXPECT_EQ(
            mmap(nullptr, now.view->size(), PROT_READ | PROT_WRITE, MAP_SHARED, now.view->fd(), 0),
            MAP_FAILED)
            << "the compositor mapped a camera frame writable";
      }
      absl::StatusOr<hc::Framebuffer> fb = display_->Import(*now.view);
      EXPECT_TRUE(fb.ok()) << fb.status();
      if (!fb.ok()) return {};
      now.fb.emplace(*std::move(fb));
      f.framebuffer += laps.Lap();
      const Shown& previous = shown_.empty() ? now : shown_.back();
      const hc::PlaneFrame overlay{*previous.view, *previous.fb, kOverlayDst, kCropSrc};
      s = display_->Present({*now.view, *now.fb, display_->FullScreen()}, &overlay);
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) return {};
      f.present += laps.Lap();
      shown_.push_back(std::move(now));
      while (shown_.size() > 2) Retire();
      f.retire += laps.Lap();
      if (n == 0) {  // the modeset: not timed
        f = LoopFigures();
        laps = Laps();
        start = absl::Now();
        flips = display_->flips();
      }
    }
    f.total = absl::Now() - start;
    f.frames = kFrames;
    EXPECT_EQ(display_->flips() - flips, uint64_t{kFrames}) << "one flip event per frame";
    return f;
  }

  // The composed output (the two frames on the screen) through vkms's
  // writeback connector into a hallocd buffer, written as PNG and read back.
  void CheckWriteback() {
    ASSERT_EQ(shown_.size(), 2u);
    const Shown& primary = shown_.back();
    const Shown& cropped = shown_.front();
    absl::StatusOr<Buffer> capture = compositor_->Allocate(halloc::ImageDescriptor(
        kWidth, kHeight, DRM_FORMAT_XRGB8888,
        halloc::usage::kCpuReadOften | halloc::usage::kComposerClientTarget, "writeback"));
    ASSERT_TRUE(capture.ok()) << capture.status();
    absl::StatusOr<hc::Framebuffer> capture_fb = display_->Import(*capture);
    ASSERT_TRUE(capture_fb.ok()) << capture_fb.status();
    const hc::PlaneFrame overlay{*cropped.view, *cropped.fb, kOverlayDst, kCropSrc};
    const hc::WritebackFrame writeback{*capture, *capture_fb};
    absl::Status s = display_->Present({*primary.view, *primary.fb, display_->FullScreen()},
                                       &overlay, &writeback);
    ASSERT_TRUE(s.ok()) << s;
    {
      absl::StatusOr<halloc::Mapping> map = capture->Map(halloc::Access::kRead);
      ASSERT_TRUE(map.ok()) << map.status();
      const halloc::v1::PlaneLayout& p = capture->layout().planes(0);
      s = halloc::png::WritePng(PngPath(), map->as<uint8_t>() + p.offset(), kWidth, kHeight,
                                uint32_t(p.stride()));
      ASSERT_TRUE(s.ok()) << s;
    }
    std::printf("pipeline writeback PNG: %s\n", PngPath().c_str());
    absl::StatusOr<halloc::png::Image> png = halloc::png::ReadPng(PngPath());
    ASSERT_TRUE(png.ok()) << png.status();
    ASSERT_EQ(png->width, kWidth);
    ASSERT_EQ(png->height, kHeight);
    ExpectVividPattern(*png);
    ExpectShownFrames(*png, *primary.view, *cropped.view);
  }

  // vivid's bars where they should be, in its exact colours: on the
  // primary plane at each bar's first, middle and last column (below
  // vivid's text, and below the overlay), and inside the overlay the
  // cropped frame's bars above its text and left of it; and the overlay's
  // edges where kOverlayDst puts them.
  void ExpectVividPattern(const halloc::png::Image& png) {
    auto expect_bar = [&](uint32_t x, uint32_t y, int bar, const char* where) {
      EXPECT_EQ(absl::StrFormat("0x%06x", png.at(x, y) & 0xffffff),
                absl::StrFormat("0x%06x", kVividBarRgb[bar]))
          << where << " at " << x << "," << y << " (bar " << bar << ")";
    };
    const uint32_t bar_width = kWidth / kVividBars;
    for (int bar = 0; bar < kVividBars; ++bar) {
      const uint32_t x0 = bar * bar_width;
      for (uint32_t y : {240u, kHeight - 1}) {
        expect_bar(x0, y, bar, "primary, a bar's first column");
        expect_bar(x0 + bar_width / 2, y, bar, "primary, a bar's middle");
        expect_bar(x0 + bar_width - 1, y, bar, "primary, a bar's last column");
      }
    }
    const uint32_t ox0 = kOverlayDst.x, oy0 = kOverlayDst.y;
    const uint32_t ox1 = ox0 + kOverlayDst.width - 1, oy1 = oy0 + kOverlayDst.height - 1;
    for (uint32_t y : {oy0, oy0 + kTextTop - 1}) {  // above the cropped text
      for (int bar = 0; bar < 3; ++bar) {
        expect_bar(ox0 + bar * bar_width, y, bar, "overlay, a bar's first column");
        expect_bar(ox0 + bar * bar_width + bar_width - 1, y, bar, "overlay, a bar's last column");
      }
    }
    for (uint32_t y : {oy0, (oy0 + oy1) / 2, oy1}) {
      expect_bar(ox0, y, 0, "overlay, left of the cropped text");
      expect_bar(ox0 + kTextLeft - 1, y, 0, "overlay, left of the cropped text");
      expect_bar(ox0 - 1, y, 4, "left of the overlay");
      expect_bar(ox1 + 1, y, 7, "right of the overlay");
    }
    for (uint32_t x : {ox0, ox0 + 100, ox1}) {
      expect_bar(x, oy0 - 1, int(x / bar_width), "above the overlay");
      expect_bar(x, oy1 + 1, int(x / bar_width), "below the overlay");
    }
  }

  // Every pixel of the capture is the shown frames' own: the primary frame
  // outside the overlay, the cropped frame's kCropSrc inside it.
  void ExpectShownFrames(const halloc::png::Image& png, const Buffer& primary,
                         const Buffer& cropped) {
    absl::StatusOr<halloc::Mapping> p = primary.Map(halloc::Access::kRead);
    absl::StatusOr<halloc::Mapping> c = cropped.Map(halloc::Access::kRead);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE(c.ok()) << c.status();
    const uint64_t stride = primary.layout().planes(0).stride();
    auto pixel = [&](const halloc::Mapping& m, uint32_t x, uint32_t y) {
      const auto* row = reinterpret_cast<const uint32_t*>(m.as<uint8_t>() + y * stride);
      return row[x] & 0xffffff;
    };
    int wrong_primary = 0, wrong_overlay = 0;
    std::string first_wrong;
    for (uint32_t y = 0; y < kHeight; ++y) {
      for (uint32_t x = 0; x < kWidth; ++x) {
        const bool in = InOverlay(x, y);
        const uint32_t want =
            in ? pixel(*c, x - kOverlayDst.x + kCropSrc.x, y - kOverlayDst.y + kCropSrc.y)
               : pixel(*p, x, y);
        const uint32_t got = png.at(x, y) & 0xffffff;
        if (got == want) continue;
        ++(in ? wrong_overlay : wrong_primary);
        if (first_wrong.empty()) {
          first_wrong = absl::StrFormat("%u,%u: 0x%06x, the frame has 0x%06x", x, y, got, want);
        }
      }
    }
    EXPECT_EQ(wrong_primary, 0) << "pixels that differ from the primary frame; first "
                                << first_wrong;
    EXPECT_EQ(wrong_overlay, 0) << "pixels that differ from the cropped frame; first "
                                << first_wrong;
    // The two are different frames: vivid's time and counter differ.
    int differ = 0;
    for (uint32_t y = kCropSrc.y; y < kCropSrc.y + kCropSrc.height; ++y) {
      for (uint32_t x = kCropSrc.x; x < kCropSrc.x + kCropSrc.width; ++x) {
        differ += pixel(*p, x, y) != pixel(*c, x, y);
      }
    }
    EXPECT_GT(differ, 0) << "the overlay shows the primary frame, not the one before it";
  }

  // The floor: vivid's own buffers (MMAP, vb2-vmalloc), exported once with
  // VIDIOC_EXPBUF and PRIME-imported into vkms, flipped the same way.
  LoopFigures RunDriverLoop();

  std::string path_;
  std::optional<hc::KmsDisplay> display_;
  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
  std::optional<Client> camera_, compositor_;
  std::unique_ptr<Camera> cam_;
  std::deque<Shown> shown_;
};

LoopFigures PipelineTest::RunDriverLoop() {
  VividMmapStream stream;
  const std::string error =
      stream.Open(path_, V4L2_PIX_FMT_XBGR32 /* XR24 */, kWidth, kHeight, kFps, kBuffers);
  EXPECT_EQ(error, "") << "vivid with its own buffers";
  if (!error.empty()) return {};
  // Each exported buffer described like a halloc frame, so that
  // KmsDisplay::Import takes the same path (drmPrimeFDToHandle, AddFB2).
  std::vector<Buffer> buffers;
  std::vector<hc::Framebuffer> fbs;
  for (const UniqueFd& dmabuf : stream.dmabufs()) {
    halloc::v1::BufferInfo info;
    info.set_id(buffers.size());
    info.set_size(stream.length());
    info.set_backend("vivid");
    halloc::v1::BufferLayout* l = info.mutable_layout();
    l->set_format(DRM_FORMAT_XRGB8888);
    l->set_width(kWidth);
    l->set_height(kHeight);
    l->set_modifier(DRM_FORMAT_MOD_LINEAR);
    l->set_size(stream.format().sizeimage);
    halloc::v1::PlaneLayout* p = l->add_planes();
    p->set_stride(stream.format().bytesperline);
    p->set_size(stream.format().sizeimage);
    buffers.emplace_back(info, halloc::UniqueFd(fcntl(dmabuf.get(), F_DUPFD_CLOEXEC, 0)));
    absl::StatusOr<hc::Framebuffer> fb = display_->Import(buffers.back());
    EXPECT_TRUE(fb.ok()) << fb.status();
    if (!fb.ok()) return {};
    fbs.push_back(*std::move(fb));
  }
  int r = stream.Start();
  EXPECT_EQ(r, 0) << "STREAMON: " << strerror(-r);
  if (r != 0) return {};

  LoopFigures f;
  Laps laps;
  absl::Time start = absl::Now();
  std::deque<uint32_t> shown;  // on the screen: the cropped one, the newest
  for (int n = 0; n <= kFrames; ++n) {
    const int index = stream.Dequeue();
    EXPECT_GE(index, 0) << "frame " << n << ": " << strerror(-index);
    if (index < 0) return {};
    f.camera += laps.Lap();
    const hc::PlaneFramebuffer overlay{fbs[shown.empty() ? index : shown.back()], kOverlayDst,
                                       kCropSrc};
    absl::Status s = display_->PresentFramebuffers({fbs[index], display_->FullScreen()}, &overlay);
    EXPECT_TRUE(s.ok()) << "frame " << n << ": " << s;
    if (!s.ok()) return {};
    f.present += laps.Lap();
    shown.push_back(uint32_t(index));
    while (shown.size() > 2) {
      r = stream.Queue(shown.front());
      EXPECT_EQ(r, 0) << "QBUF: " << strerror(-r);
      shown.pop_front();
    }
    f.retire += laps.Lap();
    if (n == 0) {  // as in RunPipeline
      f = LoopFigures();
      laps = Laps();
      start = absl::Now();
    }
  }
  f.total = absl::Now() - start;
  f.frames = kFrames;
  return f;  // framebuffers first, then the stream (STREAMOFF, REQBUFS 0)
}

// vivid → hallocd → vkms on two planes → writeback PNG, then the floor.
TEST_F(PipelineTest, VividFramesReachVkmsZeroCopyAndTheWritebackShowsThem) {
  const LoopFigures pipeline = RunPipeline();
  ASSERT_FALSE(HasFailure());
  CheckWriteback();
  ASSERT_FALSE(HasFailure());
  while (!shown_.empty()) Retire();
  ASSERT_TRUE(cam_->Stop().ok());
  cam_.reset();  // vivid's queue is free again

  const LoopFigures floor = RunDriverLoop();
  ASSERT_FALSE(HasFailure());
  const int n = pipeline.frames;
  const std::string line = absl::StrFormat(
      "pipeline vivid -> hallocd -> vkms %ux%u XR24, primary + overlay crop, %d frames: "
      "%.1f frames/s, %.2f ms/frame besides waiting for the camera (share+import %.2f, "
      "PRIME+AddFB2 %.2f, fence+commit+flip %.2f, RmFB+release+requeue %.2f); bare V4L2 "
      "MMAP+EXPBUF -> vkms: %.1f frames/s, %.2f ms/frame (flip %.2f, QBUF %.2f); "
      "the integration adds %.2f ms/frame",
      kWidth, kHeight, n, pipeline.fps(), pipeline.work_ms(), LoopFigures::Ms(pipeline.share, n),
      LoopFigures::Ms(pipeline.framebuffer, n), LoopFigures::Ms(pipeline.present, n),
      LoopFigures::Ms(pipeline.retire, n), floor.fps(), floor.work_ms(),
      LoopFigures::Ms(floor.present, n), LoopFigures::Ms(floor.retire, n),
      pipeline.work_ms() - floor.work_ms());
  std::printf("%s\n", line.c_str());
  RecordProperty("pipeline_frames_per_second", absl::StrFormat("%.1f", pipeline.fps()));
  RecordProperty("pipeline_ms_per_frame", absl::StrFormat("%.2f", pipeline.work_ms()));
  RecordProperty("floor_frames_per_second", absl::StrFormat("%.1f", floor.fps()));
  RecordProperty("floor_ms_per_frame", absl::StrFormat("%.2f", floor.work_ms()));
  RecordProperty("integration_ms_per_frame",
                 absl::StrFormat("%.2f", pipeline.work_ms() - floor.work_ms()));
  RecordProperty("figures", line);
}

}  // namespace
}  // namespace halloc_test
