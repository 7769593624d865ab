// The KMS compositor (//clients/compositor:kms) on vkms, with every frame
// from hallocd on the module: a producer client fills XRGB8888 frames
// (colour bars for the primary plane, a solid colour for the overlay plane),
// shares them read-only with a second client, the compositor, which imports
// them (views of the same pages), flips them on two planes, captures the
// composed output through vkms's writeback connector into a hallocd buffer
// and writes it as PNG; the PNG is decoded and checked pixel by pixel. The
// same run measures a bare loop with vkms's own dumb buffers as the floor
// (printed, never asserted).
#include "clients/compositor/kms.h"

#include <drm.h>
#include <drm_fourcc.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xf86drm.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "clients/compositor/pattern.h"
#include "clients/png/png.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"
#include "tests/kernel/vkms_util.h"

namespace halloc_test {
namespace {

namespace hc = ::halloc::compositor;
using ::halloc::Buffer;
using ::halloc::Client;
using ::halloc::ImageDescriptor;

constexpr uint32_t kWidth = 640, kHeight = 480;
constexpr hc::Rect kOverlayDst = {96, 64, 160, 120};
constexpr uint32_t kOverlayColour = 0xff20a040;
constexpr int kFlips = 30;
constexpr uint64_t kFrameUsage = halloc::usage::kCpuWriteOften | halloc::usage::kComposerOverlay;
constexpr uint64_t kCaptureUsage =
    halloc::usage::kCpuReadOften | halloc::usage::kComposerClientTarget;

// vgem's fence UAPI (include/uapi/drm/vgem_drm.h; libdrm ships no header).
struct VgemFenceAttach {
  uint32_t handle, flags, out_fence, pad;
};
struct VgemFenceSignal {
  uint32_t fence, flags;
};
constexpr unsigned long kVgemFenceAttach = DRM_IOWR(DRM_COMMAND_BASE + 0x1, VgemFenceAttach);
constexpr unsigned long kVgemFenceSignal = DRM_IOW(DRM_COMMAND_BASE + 0x2, VgemFenceSignal);

class VkmsTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    OpenDisplay(absl::Seconds(5));
    if (IsSkipped() || HasFatalFailure()) return;
    absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d = StartDaemon("halloc");
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    absl::StatusOr<Client> producer = daemon_->Connect();
    absl::StatusOr<Client> compositor = daemon_->Connect();
    ASSERT_TRUE(producer.ok() && compositor.ok());
    producer_.emplace(*std::move(producer));
    compositor_.emplace(*std::move(compositor));
  }

  void OpenDisplay(absl::Duration timeout) {
    hc::DisplayOptions options;
    options.width = kWidth;
    options.height = kHeight;
    options.timeout = timeout;
    OpenVkms(options, &display_);
  }

  void TearDown() override {
    display_.reset();
    producer_.reset();
    compositor_.reset();
    daemon_.reset();
  }

  // A frame the producer allocates and fills; the compositor's read-only
  // import of it (checked to be a view of the same pages).
  struct Shared {
    std::optional<Buffer> own, got;
  };
  Shared MakeFrame(uint32_t w, uint32_t h, std::optional<uint32_t> colour) {
    Shared f;
    absl::StatusOr<Buffer> own = producer_->Allocate(
        ImageDescriptor(w, h, DRM_FORMAT_XRGB8888, kFrameUsage, colour ? "solid" : "bars"));
    EXPECT_TRUE(own.ok()) << own.status();
    if (!own.ok()) return f;
    const absl::Status filled = colour ? hc::FillSolid(*own, *colour) : hc::FillBars(*own);
    EXPECT_TRUE(filled.ok()) << filled;
    absl::StatusOr<halloc::v1::Grant> grant =
        producer_->Share(own->id(), getuid(), halloc::v1::CPU_ACCESS_READ);
    EXPECT_TRUE(grant.ok()) << grant.status();
    if (!grant.ok()) return f;
    absl::StatusOr<Buffer> got = compositor_->Import(grant->token());
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return f;
    const halloc_buffer_info mine = InfoOf(own->fd()), theirs = InfoOf(got->fd());
    EXPECT_EQ(theirs.id, mine.id) << "zero-copy: the same pages";
    EXPECT_EQ(theirs.cpu_access, HALLOC_CPU_READ);
    f.own.emplace(*std::move(own));
    f.got.emplace(*std::move(got));
    return f;
  }

  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
  std::optional<Client> producer_, compositor_;
  std::optional<hc::KmsDisplay> display_;
};

// Pixels as 0xAARRGGBB text, so that a failure reads as colours.
std::string Hex(uint32_t pixel) { return absl::StrFormat("0x%08x", pixel); }

std::string PngPath() {
  const std::string dir = Env("HALLOC_RESULTS");
  return (dir.empty() ? std::string("/tmp") : dir) + "/vkms-writeback.png";
}

TEST_F(VkmsTest, TwoPlanesFlipAndTheWritebackPngShowsTheFrames) {
  hc::KmsDisplay& display = *display_;
  ASSERT_EQ(display.width(), kWidth);
  ASSERT_TRUE(display.has_overlay()) << "vkms was loaded without enable_overlay=1";
  ASSERT_TRUE(display.has_writeback()) << "vkms was loaded without enable_writeback=1";

  // Two primary frames to flip between, one overlay frame.
  Shared bars[2] = {MakeFrame(kWidth, kHeight, std::nullopt),
                    MakeFrame(kWidth, kHeight, std::nullopt)};
  Shared square = MakeFrame(kOverlayDst.width, kOverlayDst.height, kOverlayColour);
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<hc::Framebuffer> bars_fb[2] = {display.Import(*bars[0].got),
                                                display.Import(*bars[1].got)};
  absl::StatusOr<hc::Framebuffer> square_fb = display.Import(*square.got);
  ASSERT_TRUE(bars_fb[0].ok()) << bars_fb[0].status();
  ASSERT_TRUE(bars_fb[1].ok()) << bars_fb[1].status();
  ASSERT_TRUE(square_fb.ok()) << square_fb.status();
  const hc::PlaneFrame overlay{*square.got, *square_fb, kOverlayDst};
  auto primary = [&](int i) {
    return hc::PlaneFrame{*bars[i].got, *bars_fb[i], display.FullScreen()};
  };

  ASSERT_TRUE(display.Present(primary(0), &overlay).ok());  // the modeset
  const uint64_t flips_before = display.flips();
  absl::Time start = absl::Now();
  for (int i = 0; i < kFlips; ++i) {
    absl::Status s = display.Present(primary(i % 2), &overlay);
    ASSERT_TRUE(s.ok()) << "flip " << i << ": " << s;
  }
  const absl::Duration halloc_loop = absl::Now() - start;
  EXPECT_EQ(display.flips() - flips_before, uint64_t(kFlips)) << "one flip event per Present";

  // The composed output, written by vkms into a buffer of the compositor's.
  absl::StatusOr<Buffer> capture = compositor_->Allocate(
      ImageDescriptor(kWidth, kHeight, DRM_FORMAT_XRGB8888, kCaptureUsage, "writeback"));
  ASSERT_TRUE(capture.ok()) << capture.status();
  absl::StatusOr<hc::Framebuffer> capture_fb = display.Import(*capture);
  ASSERT_TRUE(capture_fb.ok()) << capture_fb.status();
  const hc::WritebackFrame writeback{*capture, *capture_fb};
  absl::Status s = display.Present(primary(0), &overlay, &writeback);
  ASSERT_TRUE(s.ok()) << s;
  {
    absl::StatusOr<halloc::Mapping> map = capture->Map(halloc::Access::kRead);
    ASSERT_TRUE(map.ok()) << map.status();
    const halloc::v1::PlaneLayout& p = capture->layout().planes(0);
    s = ::halloc::png::WritePng(PngPath(), map->as<uint8_t>() + p.offset(), kWidth, kHeight, p.stride());
    ASSERT_TRUE(s.ok()) << s;
  }

  absl::StatusOr<::halloc::png::Image> png = ::halloc::png::ReadPng(PngPath());
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_EQ(png->width, kWidth);
  ASSERT_EQ(png->height, kHeight);
  // The bars at the middle of each bar, above, below and beside the overlay.
  for (int bar = 0; bar < hc::kBarCount; ++bar) {
    const uint32_t x = (2 * bar + 1) * kWidth / (2 * hc::kBarCount);
    for (uint32_t y : {8u, kHeight / 2 + 100, kHeight - 8}) {
      SCOPED_TRACE(absl::StrCat("bar ", bar, " at ", x, ",", y));
      EXPECT_EQ(Hex(png->at(x, y)), Hex(hc::kBars[bar]));
    }
  }
  // Bar edges land on the expected columns (1 px either side).
  for (int bar = 1; bar < hc::kBarCount; ++bar) {
    const uint32_t edge = bar * kWidth / hc::kBarCount;
    EXPECT_EQ(Hex(png->at(edge - 1, kHeight - 8)), Hex(hc::kBars[bar - 1]))
        << "left of edge " << bar;
    EXPECT_EQ(Hex(png->at(edge, kHeight - 8)), Hex(hc::kBars[bar])) << "right of edge " << bar;
  }
  // The overlay's colour inside its rectangle (to its corners), the bars
  // just outside it.
  const uint32_t x0 = kOverlayDst.x, y0 = kOverlayDst.y;
  const uint32_t x1 = x0 + kOverlayDst.width - 1, y1 = y0 + kOverlayDst.height - 1;
  for (auto [x, y] :
       {std::pair{x0, y0}, {x1, y0}, {x0, y1}, {x1, y1}, {(x0 + x1) / 2, (y0 + y1) / 2}}) {
    EXPECT_EQ(Hex(png->at(x, y)), Hex(kOverlayColour)) << "inside the overlay at " << x << "," << y;
  }
  EXPECT_EQ(Hex(png->at(x0 - 1, y0 + 10)), Hex(hc::BarAt(x0 - 1, kWidth))) << "left of the overlay";
  EXPECT_EQ(Hex(png->at(x1 + 1, y0 + 10)), Hex(hc::BarAt(x1 + 1, kWidth)))
      << "right of the overlay";
  EXPECT_EQ(Hex(png->at(x0 + 10, y0 - 1)), Hex(hc::BarAt(x0 + 10, kWidth))) << "above the overlay";
  EXPECT_EQ(Hex(png->at(x0 + 10, y1 + 1)), Hex(hc::BarAt(x0 + 10, kWidth))) << "below the overlay";

  // The floor: the same flips with vkms's own dumb buffers (no PRIME, no
  // fences), on the same display in the same run.
  absl::StatusOr<hc::DumbFramebuffer> dumb_bars[2] = {display.CreateDumb(kWidth, kHeight),
                                                      display.CreateDumb(kWidth, kHeight)};
  absl::StatusOr<hc::DumbFramebuffer> dumb_square =
      display.CreateDumb(kOverlayDst.width, kOverlayDst.height);
  ASSERT_TRUE(dumb_bars[0].ok() && dumb_bars[1].ok()) << dumb_bars[0].status();
  ASSERT_TRUE(dumb_square.ok()) << dumb_square.status();
  for (auto* d : {&*dumb_bars[0], &*dumb_bars[1], &*dumb_square}) {
    for (uint32_t y = 0; y < d->fb.height(); ++y) {
      auto* row = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(d->data) + y * d->stride);
      for (uint32_t x = 0; x < d->fb.width(); ++x) {
        row[x] = d == &*dumb_square ? kOverlayColour : hc::BarAt(x, kWidth);
      }
    }
  }
  start = absl::Now();
  for (int i = 0; i < kFlips; ++i) {
    const hc::PlaneFramebuffer square_on{dumb_square->fb, kOverlayDst};
    s = display.PresentFramebuffers({dumb_bars[i % 2]->fb, display.FullScreen()}, &square_on);
    ASSERT_TRUE(s.ok()) << "dumb flip " << i << ": " << s;
  }
  const absl::Duration dumb_loop = absl::Now() - start;
  std::printf(
      "vkms %ux%u, primary + overlay, %d flips: halloc frames (shared read-only, PRIME, "
      "fence wait) %.1f frames/s; vkms dumb buffers %.1f frames/s; integration cost "
      "%.3f ms/frame\n",
      kWidth, kHeight, kFlips, kFlips / absl::ToDoubleSeconds(halloc_loop),
      kFlips / absl::ToDoubleSeconds(dumb_loop),
      absl::ToDoubleMilliseconds(halloc_loop - dumb_loop) / kFlips);
  std::printf("vkms writeback PNG: %s\n", PngPath().c_str());
}

TEST_F(VkmsTest, RefusesFormatsPlanesDoNotTakeAndShortBuffers) {
  hc::KmsDisplay& display = *display_;
  // ARGB8888: vkms's overlay takes it, its primary does not.
  absl::StatusOr<Buffer> argb = producer_->Allocate(
      ImageDescriptor(kWidth, kHeight, DRM_FORMAT_ARGB8888, kFrameUsage, "argb"));
  ASSERT_TRUE(argb.ok()) << argb.status();
  absl::StatusOr<hc::Framebuffer> fb = display.Import(*argb);
  ASSERT_TRUE(fb.ok()) << fb.status();
  absl::Status s = display.Present({*argb, *fb, display.FullScreen()});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("primary plane does not take AR24"), absl::string_view::npos) << s;

  // NV12: no vkms plane takes it (6.1's ADDFB2 does not check planes, so
  // the framebuffer is made and the commit is refused).
  absl::StatusOr<Buffer> nv12 = producer_->Allocate(
      ImageDescriptor(kOverlayDst.width, kOverlayDst.height, DRM_FORMAT_NV12, kFrameUsage, "nv12"));
  ASSERT_TRUE(nv12.ok()) << nv12.status();
  absl::StatusOr<hc::Framebuffer> nv12_fb = display.Import(*nv12);
  if (nv12_fb.ok()) {
    const hc::PlaneFrame on_overlay{*nv12, *nv12_fb, kOverlayDst};
    s = display.Present({*argb, *fb, display.FullScreen()}, &on_overlay);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  } else {
    EXPECT_EQ(nv12_fb.status().code(), absl::StatusCode::kInvalidArgument) << nv12_fb.status();
  }

  // A buffer whose fd is smaller than its layout says.
  Shared f = MakeFrame(kWidth, kHeight, 0xff000000);
  ASSERT_TRUE(f.got.has_value());
  halloc::v1::BufferInfo info = f.got->info();
  info.set_size(4096);
  absl::StatusOr<halloc::UniqueFd> fd = f.got->TakeFd();
  ASSERT_TRUE(fd.ok());
  Buffer shrunk(info, *std::move(fd));
  s = display.Import(shrunk).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("smaller than its layout"), absl::string_view::npos) << s;

  // A layout whose modifier is DRM_FORMAT_MOD_INVALID (implicit): made
  // without the modifiers flag, and with no modifier (the kernel refuses a
  // modifier without the flag: "bad fb modifier").
  Shared implicit = MakeFrame(kWidth, kHeight, 0xff000000);
  ASSERT_TRUE(implicit.got.has_value());
  halloc::v1::BufferInfo implicit_info = implicit.got->info();
  implicit_info.mutable_layout()->set_modifier(DRM_FORMAT_MOD_INVALID);
  absl::StatusOr<halloc::UniqueFd> implicit_fd = implicit.got->TakeFd();
  ASSERT_TRUE(implicit_fd.ok());
  Buffer implicit_buffer(implicit_info, *std::move(implicit_fd));
  absl::StatusOr<hc::Framebuffer> implicit_fb = display.Import(implicit_buffer);
  EXPECT_TRUE(implicit_fb.ok()) << implicit_fb.status();

  // A rectangle off the screen.
  Shared sq = MakeFrame(kOverlayDst.width, kOverlayDst.height, kOverlayColour);
  Shared bars = MakeFrame(kWidth, kHeight, std::nullopt);
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<hc::Framebuffer> sq_fb = display.Import(*sq.got);
  absl::StatusOr<hc::Framebuffer> bars_fb = display.Import(*bars.got);
  ASSERT_TRUE(sq_fb.ok() && bars_fb.ok());
  const hc::PlaneFrame off{*sq.got, *sq_fb, {int32_t(kWidth) - 10, 0, 160, 120}};
  const hc::PlaneFrame bars_on{*bars.got, *bars_fb, display.FullScreen()};
  s = display.Present(bars_on, &off);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  // A source rectangle off the framebuffer; one vkms would have to scale
  // (its planes do not scale: the kernel's ERANGE).
  const hc::PlaneFrame off_src{*sq.got, *sq_fb, kOverlayDst, {80, 0, 160, 120}};
  s = display.Present(bars_on, &off_src);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("not inside the 160x120 framebuffer"), absl::string_view::npos) << s;
  const hc::PlaneFrame scaled{*bars.got, *bars_fb, kOverlayDst, {0, 0, 320, 240}};
  s = display.Present(bars_on, &scaled);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("cannot scale"), absl::string_view::npos) << s;

  // A framebuffer given with a buffer it was not made from: Present would
  // wait for that buffer's fence and scan out other memory.
  const hc::PlaneFrame mismatched{*bars.got, *sq_fb, kOverlayDst};
  s = display.Present(bars_on, &mismatched);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(absl::StrCat("overlay plane's framebuffer was made from buffer ",
                                          sq.got->id(), ", not from buffer ", bars.got->id())),
            absl::string_view::npos)
      << s;

  // A framebuffer moved from is empty: refused by name, not sent as FB_ID
  // 0 for the kernel's bare EINVAL.
  hc::Framebuffer taken = std::move(*sq_fb);
  const hc::PlaneFrame emptied{*sq.got, *sq_fb, kOverlayDst};
  s = display.Present(bars_on, &emptied);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("overlay framebuffer is empty"), absl::string_view::npos) << s;
  // A display moved from answers FAILED_PRECONDITION, not a crash.
  hc::KmsDisplay moved = std::move(display);
  EXPECT_EQ(display.Import(*sq.got).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(display.Present(bars_on).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(display.width(), 0u);
  display = std::move(moved);  // the fixture's again
}

// The framebuffer on screen may be destroyed (a client reallocating on a
// resize): the next frame shows. RMFB turns the planes showing it off, and
// on drivers that need a primary plane the CRTC and its mode too; the
// display then set the mode again instead of failing every frame.
TEST_F(VkmsTest, DestroyingTheFramebufferOnScreenLeavesTheDisplayUsable) {
  hc::KmsDisplay& display = *display_;
  Shared first = MakeFrame(kWidth, kHeight, std::nullopt);
  Shared second = MakeFrame(kWidth, kHeight, std::nullopt);
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<hc::Framebuffer> first_fb = display.Import(*first.got);
  absl::StatusOr<hc::Framebuffer> second_fb = display.Import(*second.got);
  ASSERT_TRUE(first_fb.ok() && second_fb.ok());
  ASSERT_TRUE(display.Present({*first.got, *first_fb, display.FullScreen()}).ok());
  ASSERT_TRUE(display.Present({*first.got, *first_fb, display.FullScreen()}).ok());
  { hc::Framebuffer gone = *std::move(first_fb); }  // on screen
  const uint64_t flips = display.flips();
  absl::Status s = display.Present({*second.got, *second_fb, display.FullScreen()});
  EXPECT_TRUE(s.ok()) << s;
  s = display.Present({*second.got, *second_fb, display.FullScreen()});
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(display.flips(), flips + 2);
}

// halloc-kms (the tool beside this binary in bazel-bin; a data dependency).
std::string HallocKmsPath() {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  std::string path(self, size_t(n));
  path.resize(path.rfind("/tests/kernel/"));
  return path + "/clients/compositor/halloc-kms";
}

// The tool as a separate process, hallocd's client by its sockets, shows
// bars and an overlay square and writes the writeback capture.
TEST_F(VkmsTest, HallocKmsToolShowsFramesAndWritesAPng) {
  std::string tool = HallocKmsPath();
  ASSERT_EQ(access(tool.c_str(), X_OK), 0) << tool << ": " << strerror(errno);
  display_.reset();  // the tool must be the DRM master
  const halloc::ConnectOptions o = daemon_->connect_options();
  const std::string png = Env("HALLOC_RESULTS").empty() ? "/tmp/halloc-kms.png"
                                                        : Env("HALLOC_RESULTS") + "/halloc-kms.png";
  absl::StatusOr<halloc::Subprocess> kms = halloc::Subprocess::Spawn(
      {.argv = {tool, "--frames=10", "--png=" + png},
       .env = std::vector<std::string>{"HALLOC_CONTROL_SOCKET=" + o.control_socket,
                                       "HALLOC_BROKER_SOCKET=" + o.broker_socket}});
  ASSERT_TRUE(kms.ok()) << kms.status();
  const int status = *kms->Wait();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "halloc-kms status " << status;

  absl::StatusOr<::halloc::png::Image> img = ::halloc::png::ReadPng(png);
  ASSERT_TRUE(img.ok()) << img.status();
  ASSERT_EQ(img->width, kWidth);  // the tool's default mode
  // Its square: 0xff804020 over [w/4, w/2) x [h/4, h/2).
  EXPECT_EQ(Hex(img->at(kWidth * 3 / 8, kHeight * 3 / 8)), Hex(0xff804020));
  EXPECT_EQ(Hex(img->at(kWidth / 4 - 1, kHeight * 3 / 8)), Hex(hc::BarAt(kWidth / 4 - 1, kWidth)));
  EXPECT_EQ(Hex(img->at(kWidth - 8, kHeight - 8)), Hex(hc::kBars[hc::kBarCount - 1]));
}

// Present waits for the producer's fence: a frame a device (vgem) is still
// writing is not composed until the device signals.
TEST_F(VkmsTest, PresentWaitsForTheProducersFence) {
  UniqueFd vgem = OpenVgem();
  if (!vgem.valid()) GTEST_SKIP() << "no vgem DRM device (modprobe vgem)";
  OpenDisplay(absl::Milliseconds(300));
  ASSERT_FALSE(HasFatalFailure());
  Shared bars = MakeFrame(kWidth, kHeight, std::nullopt);
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<hc::Framebuffer> fb = display_->Import(*bars.got);
  ASSERT_TRUE(fb.ok()) << fb.status();
  const hc::PlaneFrame frame{*bars.got, *fb, display_->FullScreen()};

  uint32_t handle = 0;
  ASSERT_EQ(drmPrimeFDToHandle(vgem.get(), bars.own->fd(), &handle), 0) << strerror(errno);
  VgemFenceAttach attach = {handle, 0x1 /* write */, 0, 0};
  ASSERT_EQ(drmIoctl(vgem.get(), kVgemFenceAttach, &attach), 0) << strerror(errno);
  const uint64_t flips = display_->flips();
  absl::Status s = display_->Present(frame);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_EQ(display_->flips(), flips) << "nothing was committed";
  // What is refused anyway is refused before the wait, not after it.
  const hc::Framebuffer empty;
  s = display_->Present({*bars.got, empty, display_->FullScreen()});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  VgemFenceSignal signal = {attach.out_fence, 0};
  ASSERT_EQ(drmIoctl(vgem.get(), kVgemFenceSignal, &signal), 0) << strerror(errno);
  s = display_->Present(frame);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(display_->flips(), flips + 1);
  drm_gem_close close_args = {};
  close_args.handle = handle;
  drmIoctl(vgem.get(), DRM_IOCTL_GEM_CLOSE, &close_args);
}

// Nor is the composed output written into a buffer a device (vgem) still
// reads, as a consumer of the last capture would: Present waits for its
// fence first.
TEST_F(VkmsTest, WritebackWaitsForWhatStillReadsItsTarget) {
  UniqueFd vgem = OpenVgem();
  if (!vgem.valid()) GTEST_SKIP() << "no vgem DRM device (modprobe vgem)";
  OpenDisplay(absl::Milliseconds(300));
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(display_->has_writeback()) << "vkms was loaded without enable_writeback=1";
  Shared bars = MakeFrame(kWidth, kHeight, std::nullopt);
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<hc::Framebuffer> fb = display_->Import(*bars.got);
  ASSERT_TRUE(fb.ok()) << fb.status();
  absl::StatusOr<Buffer> capture = compositor_->Allocate(
      ImageDescriptor(kWidth, kHeight, DRM_FORMAT_XRGB8888, kCaptureUsage, "writeback"));
  ASSERT_TRUE(capture.ok()) << capture.status();
  absl::StatusOr<hc::Framebuffer> capture_fb = display_->Import(*capture);
  ASSERT_TRUE(capture_fb.ok()) << capture_fb.status();
  const hc::PlaneFrame frame{*bars.got, *fb, display_->FullScreen()};
  const hc::WritebackFrame writeback{*capture, *capture_fb};
  ASSERT_TRUE(display_->Present(frame).ok());  // the modeset

  uint32_t handle = 0;
  ASSERT_EQ(drmPrimeFDToHandle(vgem.get(), capture->fd(), &handle), 0) << strerror(errno);
  VgemFenceAttach attach = {handle, 0 /* read */, 0, 0};
  ASSERT_EQ(drmIoctl(vgem.get(), kVgemFenceAttach, &attach), 0) << strerror(errno);
  const uint64_t flips = display_->flips();
  absl::Status s = display_->Present(frame, nullptr, &writeback);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("writeback target"), absl::string_view::npos) << s;
  EXPECT_EQ(display_->flips(), flips) << "nothing was committed";
  // A frame given with another buffer's framebuffer as its target.
  const hc::WritebackFrame crossed{*bars.got, *capture_fb};
  EXPECT_EQ(display_->Present(frame, nullptr, &crossed).code(), absl::StatusCode::kInvalidArgument);

  VgemFenceSignal signal = {attach.out_fence, 0};
  ASSERT_EQ(drmIoctl(vgem.get(), kVgemFenceSignal, &signal), 0) << strerror(errno);
  s = display_->Present(frame, nullptr, &writeback);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(display_->flips(), flips + 1);
  drm_gem_close close_args = {};
  close_args.handle = handle;
  drmIoctl(vgem.get(), DRM_IOCTL_GEM_CLOSE, &close_args);
}

}  // namespace
}  // namespace halloc_test
