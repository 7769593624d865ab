// halloc buffers through a real Wayland compositor: a real hallocd (memfd
// backend on the host, so the wl_shm path) and Debian's weston 10 headless
// (pixman renderer, kiosk shell); weston's own screenshot of its output is
// decoded and checked pixel by pixel.
#include <drm_fourcc.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <wayland-client.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/png/png.h"
#include "clients/testing/test_daemon.h"
#include "clients/wayland/buffer.h"
#include "clients/wayland/display.h"
#include "clients/wayland/presenter.h"
#include "clients/wayland/weston.h"
#include "gtest/gtest.h"

namespace halloc::wayland {
namespace {

constexpr int kWidth = 320;
constexpr int kHeight = 240;
constexpr uint64_t kUsage = usage::kCpuWriteOften | usage::kCpuReadOften |
                            usage::kComposerOverlay;

// Four quadrant colours (XRGB8888 words) and a 4x4 marker at (8, 8).
struct Pattern {
  uint32_t quadrant[4];  // top-left, top-right, bottom-left, bottom-right
  uint32_t marker;
};

constexpr Pattern kPatterns[] = {
    {{0xff0000, 0x00ff00, 0x0000ff, 0xffffff}, 0x000000},
    {{0x202020, 0xffff00, 0x00ffff, 0xff00ff}, 0x804020},
    {{0x123456, 0x654321, 0xabcdef, 0xfedcba}, 0x00ff80},
};

// 0xffRRGGBB (what ReadPng gives) as "#aarrggbb".
std::string Str(uint32_t argb) {
  char s[16];
  snprintf(s, sizeof(s), "#%08x", argb);
  return s;
}

class WaylandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/weston", X_OK) != 0) {
      GTEST_SKIP() << "weston is not installed (Debian package weston; "
                      "tools/run setup installs it)";
    }
    absl::StatusOr<std::unique_ptr<testing::TestDaemon>> d =
        testing::TestDaemon::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    absl::StatusOr<Client> c = daemon_->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*std::move(c));
    absl::StatusOr<std::unique_ptr<Weston>> w =
        Weston::Start({.width = kWidth, .height = kHeight});
    ASSERT_TRUE(w.ok()) << w.status();
    weston_ = *std::move(w);
  }

  PresenterOptions Options() const {
    PresenterOptions o;
    o.display = weston_->socket();
    o.window.fullscreen = true;
    return o;
  }

  Buffer Frame(const Pattern& p, uint32_t fourcc = DRM_FORMAT_XRGB8888) {
    absl::StatusOr<Buffer> b =
        client_->Allocate(ImageDescriptor(kWidth, kHeight, fourcc, kUsage));
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return Buffer(v1::BufferInfo(), UniqueFd());
    if (fourcc == DRM_FORMAT_XRGB8888) Fill(*b, p);
    return *std::move(b);
  }

  static void Fill(const Buffer& b, const Pattern& p) {
    absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
    ASSERT_TRUE(m.ok()) << m.status();
    const v1::PlaneLayout& plane = b.layout().planes(0);
    for (int y = 0; y < kHeight; ++y) {
      auto* row = reinterpret_cast<uint32_t*>(m->as<uint8_t>() +
                                              plane.offset() + y * plane.stride());
      for (int x = 0; x < kWidth; ++x) {
        const int q = (y >= kHeight / 2) * 2 + (x >= kWidth / 2);
        const bool marker = x >= 8 && x < 12 && y >= 8 && y < 12;
        row[x] = 0xff000000u | (marker ? p.marker : p.quadrant[q]);
      }
    }
  }

  // Takes weston's screenshot and checks the pattern at known pixels.
  void ExpectOnScreen(const Pattern& p) {
    const std::string png = absl::StrCat(
        ::testing::TempDir(), "/shot-", shot_++, ".png");
    absl::Status s = weston_->Screenshot(png);
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<png::Image> img = png::ReadPng(png);
    ASSERT_TRUE(img.ok()) << img.status();
    ASSERT_EQ(img->width, static_cast<uint32_t>(kWidth));
    ASSERT_EQ(img->height, static_cast<uint32_t>(kHeight));
    struct Probe {
      uint32_t x, y, xrgb;
    };
    const Probe probes[] = {
        {kWidth / 4, kHeight / 4, p.quadrant[0]},
        {3 * kWidth / 4, kHeight / 4, p.quadrant[1]},
        {kWidth / 4, 3 * kHeight / 4, p.quadrant[2]},
        {3 * kWidth / 4, 3 * kHeight / 4, p.quadrant[3]},
        {0, 0, p.quadrant[0]},
        {kWidth - 1, kHeight - 1, p.quadrant[3]},
        {kWidth / 2 - 1, kHeight / 2, p.quadrant[2]},
        {kWidth / 2, kHeight / 2 - 1, p.quadrant[1]},
        {8, 8, p.marker},
        {11, 11, p.marker},
        {12, 11, p.quadrant[0]},
    };
    for (const Probe& probe : probes) {
      SCOPED_TRACE(absl::StrCat("pixel (", probe.x, ", ", probe.y, ")"));
      EXPECT_EQ(Str(img->at(probe.x, probe.y)), Str(0xff000000u | probe.xrgb));
    }
  }

  std::unique_ptr<testing::TestDaemon> daemon_;
  std::optional<Client> client_;
  std::unique_ptr<Weston> weston_;
  int shot_ = 0;
};

TEST_F(WaylandTest, Xrgb8888FramesReachTheScreenPixelForPixel) {
  absl::StatusOr<std::unique_ptr<Presenter>> p =
      Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->window().configured_width(), kWidth);
  EXPECT_EQ((*p)->window().configured_height(), kHeight);
  for (const Pattern& pattern : kPatterns) {
    SCOPED_TRACE(absl::StrCat("pattern marker ", pattern.marker));
    Buffer frame = Frame(pattern);
    ASSERT_FALSE(frame.is_dmabuf()) << "the host's hallocd gives memfds";
    ASSERT_TRUE((*p)->Show(frame).ok());
    ASSERT_TRUE((*p)->WaitShown().ok());
    EXPECT_EQ((*p)->last_path(), BufferPath::kShm);
    ExpectOnScreen(pattern);
  }
}

// The same buffer, rewritten and shown again, shows its new content: the
// compositor reads the buffer's own pages (no copy was taken at import).
TEST_F(WaylandTest, TheCompositorReadsTheBuffersOwnPages) {
  absl::StatusOr<std::unique_ptr<Presenter>> p =
      Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  Buffer frame = Frame(kPatterns[0]);
  ASSERT_TRUE((*p)->Show(frame).ok());
  ASSERT_TRUE((*p)->WaitShown().ok());
  ExpectOnScreen(kPatterns[0]);
  Fill(frame, kPatterns[1]);
  ASSERT_TRUE((*p)->Show(frame).ok());
  ASSERT_TRUE((*p)->WaitShown().ok());
  ExpectOnScreen(kPatterns[1]);
}

// A consumer shows what the producer shared with it, through Import.
TEST_F(WaylandTest, AnImportedFrameIsShown) {
  Buffer frame = Frame(kPatterns[2]);
  absl::StatusOr<v1::Grant> grant =
      client_->Share(frame.id(), getuid(), v1::CPU_ACCESS_READ_WRITE);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<Client> consumer = daemon_->Connect();
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  absl::StatusOr<Buffer> imported = consumer->Import(grant->token());
  ASSERT_TRUE(imported.ok()) << imported.status();
  absl::StatusOr<std::unique_ptr<Presenter>> p = Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  absl::Status s = (*p)->Show(*imported);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE((*p)->WaitShown().ok());
  ExpectOnScreen(kPatterns[2]);
}

// libwayland-server maps wl_shm pools read-write: a read-only import is
// refused for the zero-copy wl_shm path, with the reason, and the
// connection lives on.
TEST_F(WaylandTest, AReadOnlyImportIsRefusedForZeroCopyWlShmWithTheReason) {
  Buffer frame = Frame(kPatterns[2]);
  absl::StatusOr<v1::Grant> grant =
      client_->Share(frame.id(), getuid(), v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<Client> consumer = daemon_->Connect();
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  absl::StatusOr<Buffer> imported = consumer->Import(grant->token());
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_EQ(imported->info().cpu_access(), v1::CPU_ACCESS_READ);
  absl::StatusOr<std::unique_ptr<Display>> d =
      Display::Connect(weston_->socket());
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<WlBuffer> wl =
      WlBuffer::Create(**d, *imported, BufferPath::kShm);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition)
      << wl.status();
  EXPECT_NE(wl.status().message().find("read-only"), std::string::npos)
      << wl.status();
  EXPECT_TRUE((*d)->Roundtrip().ok());
}

// ... and shown through a copy on the automatic path, each Show copying the
// frame's current content, never into a copy the compositor still holds
// (weston keeps the one on screen until another is attached: the next Show
// writes a second copy; Refresh refuses a busy one).
TEST_F(WaylandTest, AReadOnlyImportIsShownThroughACopy) {
  Buffer frame = Frame(kPatterns[0]);
  absl::StatusOr<v1::Grant> grant =
      client_->Share(frame.id(), getuid(), v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<Client> consumer = daemon_->Connect();
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  absl::StatusOr<Buffer> imported = consumer->Import(grant->token());
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_EQ(imported->info().cpu_access(), v1::CPU_ACCESS_READ);
  absl::StatusOr<std::unique_ptr<Presenter>> p = Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  for (const Pattern& pattern : {kPatterns[0], kPatterns[1], kPatterns[2], kPatterns[0]}) {
    SCOPED_TRACE(absl::StrCat("pattern marker ", pattern.marker));
    Fill(frame, pattern);  // the producer writes its own buffer
    absl::Status s = (*p)->Show(*imported);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE((*p)->WaitShown().ok());
    EXPECT_EQ((*p)->last_path(), BufferPath::kShmCopy);
    ExpectOnScreen(pattern);
  }
  RecordProperty("copies", std::to_string((*p)->wl_buffers_of(imported->id())));
  EXPECT_LE((*p)->wl_buffers_of(imported->id()), Presenter::kMaxCopies);
  // The copies went to the compositor read-write: each sealed at its size,
  // so that one shrunk under us cannot fault our next copy into it.
  int copies = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), ec).string();
    if (ec || target.find("memfd:halloc-wayland-copy") == std::string::npos) continue;
    ++copies;
    const int seals = fcntl(std::stoi(entry.path().filename().string()), F_GET_SEALS);
    EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW), F_SEAL_SHRINK | F_SEAL_GROW) << target;
  }
  EXPECT_GE(copies, 1) << "no copy's memfd found";
}

// On a zero-copy path (here wl_shm over the producer's own memfd) weston's
// pixman renderer reads the caller's pages at every repaint until another
// buffer replaces them: busy() says so, and WaitReleased returns once the
// compositor let go (wl_buffer.release), after the next Show.
TEST_F(WaylandTest, AZeroCopyFrameIsBusyUntilTheCompositorLetsGo) {
  PresenterOptions options = Options();
  options.frame_timeout = absl::Seconds(1);  // one wait below runs it out
  absl::StatusOr<std::unique_ptr<Presenter>> p = Presenter::Create(options);
  ASSERT_TRUE(p.ok()) << p.status();
  Buffer first = Frame(kPatterns[0]);
  Buffer second = Frame(kPatterns[1]);
  EXPECT_FALSE((*p)->busy(first.id())) << "never shown";
  EXPECT_TRUE((*p)->WaitReleased(first.id()).ok());
  ASSERT_TRUE((*p)->Show(first).ok());
  ASSERT_EQ((*p)->last_path(), BufferPath::kShm) << "not the zero-copy path";
  ASSERT_TRUE((*p)->WaitShown().ok());
  EXPECT_TRUE((*p)->busy(first.id())) << "on screen: the compositor reads it";
  const absl::Status alone = (*p)->WaitReleased(first.id());
  EXPECT_EQ(alone.code(), absl::StatusCode::kDeadlineExceeded)
      << "released while nothing replaced it: " << alone;
  ASSERT_TRUE((*p)->Show(second).ok());
  ASSERT_TRUE((*p)->WaitReleased(first.id()).ok());
  EXPECT_FALSE((*p)->busy(first.id()));
  EXPECT_TRUE((*p)->busy(second.id()));
  ASSERT_TRUE((*p)->WaitShown().ok());
  ExpectOnScreen(kPatterns[1]);
}

// weston ends a connection for a protocol error (here a wl_shm pool of
// negative size) and closes its end: a frame presented after that failed
// to flush (EPIPE) and was reported shown (OK), the reason left unread.
TEST_F(WaylandTest, AFrameOnAConnectionTheCompositorEndedFails) {
  absl::StatusOr<std::unique_ptr<Presenter>> p = Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  Buffer first = Frame(kPatterns[0]);
  Buffer second = Frame(kPatterns[1]);
  ASSERT_TRUE((*p)->Show(first).ok());
  Display& display = (*p)->display();
  absl::StatusOr<WlBuffer> wl = WlBuffer::Create(display, second, BufferPath::kShm);
  ASSERT_TRUE(wl.ok()) << wl.status();
  wl_shm_pool* pool = wl_shm_create_pool(display.shm(), first.fd(), -1);
  ASSERT_GE(wl_display_flush(display.display()), 0);
  pollfd pfd = {.fd = wl_display_get_fd(display.display()), .events = POLLIN, .revents = 0};
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (!(pfd.revents & POLLHUP) && absl::Now() < until) {
    ASSERT_GE(poll(&pfd, 1, 100), 0);
  }
  ASSERT_TRUE(pfd.revents & POLLHUP) << "weston kept the connection";
  const absl::Status presented = (*p)->window().Present(*wl);
  EXPECT_EQ(presented.code(), absl::StatusCode::kInternal) << presented;
  EXPECT_NE(presented.message().find("protocol error"), std::string::npos) << presented;
  EXPECT_FALSE(wl->busy()) << "a frame that never went is not the compositor's";
  // And what a wait or the next frame says (as libwayland reads it).
  const absl::Status shown = (*p)->Show(second);
  EXPECT_EQ(shown.code(), absl::StatusCode::kInternal) << shown;
  EXPECT_NE(shown.message().find("protocol error"), std::string::npos) << shown;
  wl_shm_pool_destroy(pool);
}

// Frames paced by frame callbacks: how fast the loop goes (weston's
// headless output repaints on its own timer).
TEST_F(WaylandTest, PresentLoopPacedByFrameCallbacks) {
  absl::StatusOr<std::unique_ptr<Presenter>> p =
      Presenter::Create(Options());
  ASSERT_TRUE(p.ok()) << p.status();
  std::vector<Buffer> ring;
  for (const Pattern& pattern : kPatterns) ring.push_back(Frame(pattern));
  constexpr int kFrames = 90;
  ASSERT_TRUE((*p)->Show(ring[0]).ok());  // the imports happen once, here
  ASSERT_TRUE((*p)->Show(ring[1]).ok());
  ASSERT_TRUE((*p)->Show(ring[2]).ok());
  const absl::Time start = absl::Now();
  for (int i = 0; i < kFrames; ++i) {
    absl::Status s = (*p)->Show(ring[i % ring.size()]);
    ASSERT_TRUE(s.ok()) << "frame " << i << ": " << s;
  }
  ASSERT_TRUE((*p)->WaitShown().ok());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double fps = kFrames / seconds;
  printf("present loop: %d frames in %.3f s = %.1f frames/s (%dx%d XRGB8888, "
         "wl_shm, weston headless pixman)\n",
         kFrames, seconds, fps, kWidth, kHeight);
  RecordProperty("frames_per_second", absl::StrCat(fps));
  EXPECT_GT(fps, 5.0);
  ExpectOnScreen(kPatterns[(kFrames - 1) % 3]);
}

TEST_F(WaylandTest, ABlobIsNotAnImage) {
  absl::StatusOr<std::unique_ptr<Display>> d =
      Display::Connect(weston_->socket());
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<Buffer> blob = client_->Allocate(BlobDescriptor(1 << 16));
  ASSERT_TRUE(blob.ok()) << blob.status();
  absl::StatusOr<WlBuffer> wl = WlBuffer::Create(**d, *blob);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kInvalidArgument)
      << wl.status();
  EXPECT_NE(wl.status().message().find("not an image"), std::string::npos)
      << wl.status();
}

TEST_F(WaylandTest, AFormatTheCompositorDoesNotTakeIsRefusedByName) {
  absl::StatusOr<std::unique_ptr<Display>> d =
      Display::Connect(weston_->socket());
  ASSERT_TRUE(d.ok()) << d.status();
  // weston's pixman renderer takes RGB formats only.
  ASSERT_FALSE((*d)->ShmSupports(DRM_FORMAT_NV12));
  ASSERT_TRUE((*d)->ShmSupports(ShmFormatFor(DRM_FORMAT_XRGB8888)));
  Buffer nv12 = Frame(kPatterns[0], DRM_FORMAT_NV12);
  absl::StatusOr<WlBuffer> wl = WlBuffer::Create(**d, nv12);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition)
      << wl.status();
  EXPECT_NE(wl.status().message().find("NV12"), std::string::npos)
      << wl.status();
  // The connection is still usable: nothing was sent.
  EXPECT_TRUE((*d)->Roundtrip().ok());
}

// A layout wl_shm would refuse is refused here, by name, and the
// connection lives on: libwayland-server answers one with a protocol error
// (invalid_stride), which ended the Display and everything on it.
TEST_F(WaylandTest, ALayoutWlShmWouldRefuseIsRefusedBeforeItIsSent) {
  absl::StatusOr<std::unique_ptr<Display>> d = Display::Connect(weston_->socket());
  ASSERT_TRUE(d.ok()) << d.status();
  Buffer frame = Frame(kPatterns[0]);
  const v1::BufferInfo good = frame.info();
  absl::StatusOr<UniqueFd> fd = frame.TakeFd();
  ASSERT_TRUE(fd.ok());
  const SharedFd shared(*std::move(fd));
  auto create = [&](uint64_t offset, uint64_t stride) {
    v1::BufferInfo info = good;
    info.mutable_layout()->mutable_planes(0)->set_offset(offset);
    info.mutable_layout()->mutable_planes(0)->set_stride(stride);
    absl::StatusOr<UniqueFd> dup = shared.Dup();
    if (!dup.ok()) return dup.status();
    return WlBuffer::Create(**d, Buffer(info, *std::move(dup)), BufferPath::kShm).status();
  };
  const uint64_t stride = good.layout().planes(0).stride();
  for (const auto& [offset, s] :
       {std::pair<uint64_t, uint64_t>{good.size() - stride + 1, stride},  // past the end
        {0, 2},                                                           // under the width
        {good.size(), stride}}) {
    const absl::Status refused = create(offset, s);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
    EXPECT_NE(refused.message().find("as wl_shm wants"), std::string::npos) << refused;
  }
  EXPECT_TRUE((*d)->Roundtrip().ok()) << "the connection did not survive";
  EXPECT_TRUE(create(0, stride).ok());  // the real layout is still shown
}

TEST_F(WaylandTest, LinuxDmabufIsRefusedWhereTheCompositorLacksIt) {
  absl::StatusOr<std::unique_ptr<Display>> d =
      Display::Connect(weston_->socket());
  ASSERT_TRUE(d.ok()) << d.status();
  // weston 10's pixman renderer offers no zwp_linux_dmabuf_v1.
  ASSERT_EQ((*d)->dmabuf(), nullptr);
  Buffer frame = Frame(kPatterns[0]);
  absl::StatusOr<WlBuffer> wl =
      WlBuffer::Create(**d, frame, BufferPath::kDmabuf);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition)
      << wl.status();
  EXPECT_NE(wl.status().message().find("zwp_linux_dmabuf_v1"),
            std::string::npos)
      << wl.status();
}

TEST_F(WaylandTest, NoCompositorIsUnavailable) {
  absl::StatusOr<std::unique_ptr<Display>> d =
      Display::Connect(weston_->socket() + ".absent");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnavailable) << d.status();
}

}  // namespace
}  // namespace halloc::wayland
