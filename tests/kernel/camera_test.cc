// The camera library (clients/camera) on vivid: hallocd (halloc backend)
// allocates the frames, vivid captures its test pattern into them with
// V4L2_MEMORY_DMABUF, and a second client imports each shared frame
// read-only: the same pages (HALLOC_IOCTL_INFO's id), the same bytes.
// Once with vivid's default videobuf2-vmalloc, once reloaded as
// allocators=1 (videobuf2-dma-contig) under a policy that lets only vivid
// attach the camera's buffers.
#include "clients/camera/camera.h"

#include <drm_fourcc.h>
#include <linux/videodev2.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "clients/camera/pattern.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"
#include "tests/kernel/vivid_fixture.h"

namespace halloc_test {
namespace {

using halloc::camera::Camera;
using halloc::camera::CameraOptions;
using halloc::camera::Frame;
using halloc::camera::Rgb;

// The issue asks for >= 30 frames; the other formats and APIs take fewer
// (qemu's TCG makes each vivid frame cost ~0.2 s).
constexpr int kCaptureFrames = 30;
constexpr int kShortCapture = 8;
constexpr uint32_t kWidth = 640, kHeight = 480;
constexpr uint64_t kCpuReadOften = 0x3;

class CameraVividTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    StartCameraDaemon("");
  }

  void StartCameraDaemon(const std::string& policy) {
    path_ = VividCapturePath();
    if (path_.empty()) {
      // tools/kernel-test.sh loads vivid: there a missing capture node is
      // a failure, not a machine without one.
      if (!Env("HALLOC_KO").empty()) FAIL() << "vivid should be loaded with a capture node";
      GTEST_SKIP() << "no vivid capture device (modprobe vivid)";
    }
    auto daemon = StartDaemon("halloc", policy);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = std::move(*daemon);
    auto camera = daemon_->Connect();
    ASSERT_TRUE(camera.ok()) << camera.status();
    camera_.emplace(std::move(*camera));
    auto display = daemon_->Connect();
    ASSERT_TRUE(display.ok()) << display.status();
    display_.emplace(std::move(*display));
  }

  CameraOptions Options(uint32_t format) const {
    CameraOptions o;
    o.device = path_;
    o.format = format;
    o.width = kWidth;
    o.height = kHeight;
    o.buffer_count = 4;
    o.usage = kCpuReadOften;
    o.fps = 30;  // vivid's webcam would run 640x480 at 5 fps
    return o;
  }

  // Checks vivid's bars at the centre of each bar, below its text overlay.
  void ExpectColourBars(const halloc::v1::BufferLayout& layout,
                        const uint8_t* data, size_t size) {
    const uint32_t w = layout.width();
    for (int bar = 0; bar < 8; ++bar) {
      const uint32_t x = bar * w / 8 + w / 16;
      absl::StatusOr<Rgb> c =
          halloc::camera::PixelAt(layout, data, size, x, layout.height() * 3 / 4);
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(VividBar(c->r, c->g, c->b), bar) << "column " << x << ": " << int(c->r) << ","
                                << int(c->g) << "," << int(c->b);
    }
  }

  // Captures `frames` frames in `format`; shares each read-only with the
  // display client, which imports the same pages.
  void CaptureAndShare(uint32_t format, int frames, bool multiplanar_api = false) {
    CaptureAndShareWith(Options(format), frames, multiplanar_api);
  }

  void CaptureAndShareWith(const CameraOptions& options, int frames,
                           bool multiplanar_api = false) {
    const uint32_t format = options.format;
    absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::OpenV4l2(*camera_, options);
    ASSERT_TRUE(cam.ok()) << cam.status();
    const halloc::camera::StreamFormat& f = (*cam)->format();
    EXPECT_EQ(f.width, options.width);
    EXPECT_EQ(f.height, options.height);
    EXPECT_EQ(f.multiplanar_api, multiplanar_api);
    EXPECT_GT(f.fps, 0) << "vivid says its frame rate";
    for (const halloc::Buffer& b : (*cam)->buffers()) {
      EXPECT_TRUE(b.is_dmabuf());
      EXPECT_EQ(b.info().backend(), "halloc");
      EXPECT_EQ(b.layout().format(), format);
      EXPECT_EQ(b.layout().planes(0).stride(), f.bytesperline);
    }
    RecordProperty("negotiated", (*cam)->Describe() + " bytesperline " +
                                     std::to_string(f.bytesperline) + " sizeimage " +
                                     std::to_string(f.sizeimage));
    ASSERT_TRUE((*cam)->Start().ok());
    int64_t last_sequence = -1;
    absl::Duration first_timestamp;
    for (int n = 0; n < frames; ++n) {
      SCOPED_TRACE("frame " + std::to_string(n));
      absl::StatusOr<Frame> frame = (*cam)->Next(absl::Seconds(10));
      ASSERT_TRUE(frame.ok()) << frame.status();
      // On CLOCK_MONOTONIC (Frame's promise): near now. (vivid computes
      // its stamps from its frame schedule: up to a frame period ahead of
      // the dequeue, so not "before now".)
      timespec now_ts = {};
      ::clock_gettime(CLOCK_MONOTONIC, &now_ts);
      const absl::Duration now = absl::DurationFromTimespec(now_ts);
      EXPECT_LT(absl::AbsDuration(frame->timestamp - now), absl::Seconds(10))
          << frame->timestamp << " against CLOCK_MONOTONIC's " << now;
      EXPECT_GT(int64_t{frame->sequence}, last_sequence);
      last_sequence = frame->sequence;
      if (n == 0) first_timestamp = frame->timestamp;
      if (n == frames - 1 && n > 0) {
        // vivid's own timestamps: the capture rate with a share, an import,
        // two mappings and a compare per frame (qemu TCG).
        const double fps =
            n / absl::ToDoubleSeconds(frame->timestamp - first_timestamp);
        RecordProperty("frames_per_second", std::to_string(fps));
        RecordProperty("driver_fps", std::to_string(f.fps));
      }
      EXPECT_EQ(frame->bytesused, f.sizeimage);
      const halloc_buffer_info mine = InfoOf(frame->buffer->fd());

      absl::StatusOr<halloc::v1::Grant> grant =
          (*cam)->ShareWithUid(*frame, getuid(), halloc::v1::CPU_ACCESS_READ);
      ASSERT_TRUE(grant.ok()) << grant.status();
      absl::StatusOr<halloc::Buffer> got = display_->Import(grant->token());
      ASSERT_TRUE(got.ok()) << got.status();
      const halloc_buffer_info theirs = InfoOf(got->fd());
      EXPECT_EQ(theirs.id, mine.id) << "the consumer holds the same pages";
      EXPECT_EQ(theirs.cpu_access, HALLOC_CPU_READ);
      EXPECT_EQ(mmap(nullptr, got->size(), PROT_READ | PROT_WRITE, MAP_SHARED,
                     got->fd(), 0),
                MAP_FAILED)
          << "a read-only frame mapped writable";
      absl::StatusOr<halloc::Mapping> view = got->Map(halloc::Access::kRead);
      ASSERT_TRUE(view.ok()) << view.status();
      ExpectColourBars(got->layout(), view->as<uint8_t>(), view->size());
      absl::StatusOr<halloc::Mapping> own = frame->buffer->Map(halloc::Access::kRead);
      ASSERT_TRUE(own.ok()) << own.status();
      EXPECT_EQ(memcmp(own->data(), view->data(), f.sizeimage), 0);
      ASSERT_TRUE(display_->Release(got->id()).ok());
      ASSERT_TRUE((*cam)->Requeue(frame->index).ok());
    }
    ASSERT_TRUE((*cam)->Stop().ok());
  }

  std::string path_;
  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
  std::optional<halloc::Client> camera_;
  std::optional<halloc::Client> display_;
};

TEST_F(CameraVividTest, CapturesXrgb8888SharedReadOnly) {
  CaptureAndShare(DRM_FORMAT_XRGB8888, kCaptureFrames);
}

TEST_F(CameraVividTest, CapturesYuyvSharedReadOnly) {
  CaptureAndShare(DRM_FORMAT_YUYV, kShortCapture);
}

TEST_F(CameraVividTest, CapturesNv12SharedReadOnly) {
  CaptureAndShare(DRM_FORMAT_NV12, kShortCapture);
}

// vivid's "Inject V4L2_BUF_FLAG_ERROR" button (VIVID_CID_DQBUF_ERROR in
// drivers/media/test-drivers/vivid/vivid-ctrls.c): the next frame it fills
// comes back flagged as corrupt.
constexpr uint32_t kVividDqbufError = 0x00f0f000 + 66;

// A frame the driver flags corrupt is not handed out: Next passes over it,
// its buffer goes straight back to vivid, and the frames after it come as
// before (every buffer still cycles).
TEST_F(CameraVividTest, FramesFlaggedCorruptAreSkippedAndTheirBuffersRequeued) {
  absl::StatusOr<std::unique_ptr<Camera>> cam =
      Camera::OpenV4l2(*camera_, Options(DRM_FORMAT_XRGB8888));
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_TRUE((*cam)->Start().ok());
  absl::StatusOr<Frame> first = (*cam)->Next(absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*cam)->Requeue(first->index).ok());
  // Controls belong to the device: a second open presses the button.
  UniqueFd node(open(path_.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(node.valid());
  v4l2_control inject = {};
  inject.id = kVividDqbufError;
  if (Ioctl(node.get(), VIDIOC_S_CTRL, &inject) != 0) {
    GTEST_SKIP() << "vivid takes no error injection (no_error_inj=1?): " << strerror(errno);
  }
  int64_t last = first->sequence;
  const size_t buffers = (*cam)->buffers().size();
  for (size_t n = 0; n < 2 * buffers; ++n) {
    SCOPED_TRACE("frame " + std::to_string(n));
    absl::StatusOr<Frame> frame = (*cam)->Next(absl::Seconds(10));
    ASSERT_TRUE(frame.ok()) << frame.status();
    EXPECT_GT(int64_t{frame->sequence}, last);
    last = frame->sequence;
    ASSERT_TRUE((*cam)->Requeue(frame->index).ok());
  }
  EXPECT_EQ((*cam)->skipped_error_frames(), 1u);
  ASSERT_TRUE((*cam)->Stop().ok());
}

// Selects vivid's first input named `prefix`... for as long as it lives
// (the input is device state), then input 0 again.
class VividInput {
 public:
  VividInput(const std::string& path, const std::string& prefix) {
    fd_ = UniqueFd(open(path.c_str(), O_RDWR | O_CLOEXEC));
    for (uint32_t i = 0; fd_.valid(); ++i) {
      v4l2_input in = {};
      in.index = i;
      if (Ioctl(fd_.get(), VIDIOC_ENUMINPUT, &in) != 0) break;
      if (std::string(reinterpret_cast<char*>(in.name)).rfind(prefix, 0) != 0) continue;
      int index = static_cast<int>(i);
      selected_ = Ioctl(fd_.get(), VIDIOC_S_INPUT, &index) == 0;
      break;
    }
  }
  ~VividInput() {
    int zero = 0;
    if (selected_) Ioctl(fd_.get(), VIDIOC_S_INPUT, &zero);
  }
  bool selected() const { return selected_; }

 private:
  UniqueFd fd_;
  bool selected_ = false;
};

// A display wants 64-byte rows (composer_overlay): 600 XR24 pixels are
// 2400 bytes, hallocd pads to 2432, and the camera has vivid use that
// pitch (S_FMT's bytesperline) instead of its own tight 2400. (vivid's
// webcam input has only sizes whose rows are already 64-byte multiples;
// its HDMI input scales to any size.)
TEST_F(CameraVividTest, PaddedHallocStrideIsPassedToTheDriver) {
  VividInput hdmi(path_, "HDMI");
  if (!hdmi.selected()) GTEST_SKIP() << "vivid has no HDMI input (num_inputs)";
  CameraOptions o = Options(DRM_FORMAT_XRGB8888);
  o.width = 600;
  o.usage |= 1u << 11;  // composer_overlay
  absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::OpenV4l2(*camera_, o);
  ASSERT_TRUE(cam.ok()) << cam.status();
  EXPECT_EQ((*cam)->format().width, 600u);
  EXPECT_EQ((*cam)->format().bytesperline, 2432u);
  EXPECT_EQ((*cam)->format().sizeimage, 2432u * kHeight);
  cam->reset();
  CaptureAndShareWith(o, kShortCapture);
}

// hallocd pads an encoder's NV12 to whole 16-row macroblocks (180 → 192
// rows, chroma at 320 * 192), vivid's single-buffer NV12 puts chroma right
// after 180 rows: they cannot agree, and the error names both offsets.
TEST_F(CameraVividTest, DisagreeingPlaneLayoutIsRefused) {
  CameraOptions o = Options(DRM_FORMAT_NV12);
  o.width = 320;
  o.height = 180;
  o.usage |= 1u << 16;  // video_encoder
  absl::Status s = Camera::OpenV4l2(*camera_, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("57600"), std::string::npos) << s;
  EXPECT_NE(s.message().find("61440"), std::string::npos) << s;
}

// P010 has a V4L2 name, but vivid does not offer it.
TEST_F(CameraVividTest, FormatTheDriverDoesNotOfferIsRefused) {
  absl::Status s = Camera::OpenV4l2(*camera_, Options(DRM_FORMAT_P010)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("does not offer P010"), std::string::npos) << s;
  EXPECT_NE(s.message().find("XR24"), std::string::npos) << "lists what it offers: " << s;
}

TEST_F(CameraVividTest, MemfdBackendIsRefusedForV4l2) {
  auto daemon = StartDaemon("memfd");
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = (*daemon)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Status s = Camera::OpenV4l2(*client, Options(DRM_FORMAT_XRGB8888)).status();
  // Refused by the camera ("gives no dma-bufs") or, where the memfd
  // backend cannot give the rule's rights, by hallocd first; both say memfd.
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("memfd"), std::string::npos) << s;
}

// vivid reloaded with other parameters for a fixture's tests (the
// default, allocators=0, is put back after), and hallocd with `policy`.
class CameraVividReloadedTest : public CameraVividTest {
 protected:
  void SetUpReloaded(const std::string& allocators, const std::string& policy) {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    std::string why;
    // ReloadVivid appends "allocators=<arg>" to vivid's parameters.
    if (!ReloadVivid(allocators, &why)) GTEST_SKIP() << why;
    reloaded_ = true;
    StartCameraDaemon(policy);
  }
  void TearDown() override {
    camera_.reset();
    display_.reset();
    daemon_.reset();
    std::string why;
    if (reloaded_) {
      EXPECT_TRUE(ReloadVivid("0", &why)) << why;
    }
  }
  bool reloaded_ = false;
};

class CameraVividContigTest : public CameraVividReloadedTest {
 protected:
  void SetUp() override {
    // Only vivid may attach the camera's buffers; they come from
    // halloc-deferred, backed contiguously below 4 GiB at vivid's QBUF.
    SetUpReloaded("1", R"(
      clients {
        name: "camera"
        match { uids: 0 }
        usages: "camera_output" usages: "cpu_read_often"
        heaps: "halloc"
        max_cpu_access: CPU_ACCESS_READ
        attach_devices: "vivid"
        share_to: "camera" receive_from: "camera"
      })");
  }
};

TEST_F(CameraVividContigTest, CapturesXrgb8888SharedReadOnly) {
  CaptureAndShare(DRM_FORMAT_XRGB8888, kCaptureFrames);
}

// vivid with multiplanar=2 speaks only the multi-planar API; the camera
// uses it with one memory plane (XR24, and NV12 with both planes in one
// buffer).
class CameraVividMplaneTest : public CameraVividReloadedTest {
 protected:
  void SetUp() override { SetUpReloaded("0 multiplanar=2", ""); }
};

TEST_F(CameraVividMplaneTest, CapturesXrgb8888) {
  CaptureAndShare(DRM_FORMAT_XRGB8888, kShortCapture, /*multiplanar_api=*/true);
}

TEST_F(CameraVividMplaneTest, CapturesNv12) {
  CaptureAndShare(DRM_FORMAT_NV12, kShortCapture, /*multiplanar_api=*/true);
}

// vivid puts a 128-byte header before each YUYV frame on the
// multi-planar API (data_offset): frames that do not start where hallocd's
// layout says are refused, not handed out shifted. Here at Open (the
// driver's sizeimage counts the header); a driver whose sizeimage does not
// would have each frame refused at Next (data_offset checked there too).
TEST_F(CameraVividMplaneTest, FramesBehindAHeaderAreRefused) {
  absl::StatusOr<std::unique_ptr<Camera>> cam =
      Camera::OpenV4l2(*camera_, Options(DRM_FORMAT_YUYV));
  EXPECT_EQ(cam.status().code(), absl::StatusCode::kFailedPrecondition) << cam.status();
  EXPECT_TRUE(absl::StrContains(cam.status().message(), "sizeimage 614528")) << cam.status();
}

}  // namespace
}  // namespace halloc_test
