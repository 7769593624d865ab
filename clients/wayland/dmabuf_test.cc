// The linux-dmabuf path against a fake compositor (fake_compositor.h): what
// the library tells the compositor about a halloc buffer (each plane's
// offset and stride, the modifier, the fd), and how it refuses what the
// compositor does not take. On the host hallocd's buffers are memfds, so
// CreateDmabufForTesting skips the dma-buf check; the rest is the path
// WlBuffer::Create takes for a dma-buf.
#include <drm_fourcc.h>
#include <poll.h>
#include <sys/stat.h>

#include <memory>
#include <optional>
#include <vector>

#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "clients/wayland/buffer.h"
#include "clients/wayland/display.h"
#include "clients/wayland/fake_compositor.h"
#include "clients/wayland/presenter.h"
#include "clients/wayland/window.h"
#include "gtest/gtest.h"
#include "linux-dmabuf-unstable-v1-client-protocol.h"

namespace halloc::wayland {
namespace {

using ::halloc::wayland::testing::DmabufRequest;
using ::halloc::wayland::testing::FakeCompositor;

class DmabufTest : public halloc::testing::HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    absl::StatusOr<std::unique_ptr<FakeCompositor>> c =
        FakeCompositor::Start({.formats = {{DRM_FORMAT_XRGB8888, DRM_FORMAT_MOD_LINEAR},
                                           {DRM_FORMAT_NV12, DRM_FORMAT_MOD_LINEAR},
                                           {DRM_FORMAT_YUYV, DRM_FORMAT_MOD_LINEAR}},
                               .refuse_format = DRM_FORMAT_YUYV});
    ASSERT_TRUE(c.ok()) << c.status();
    compositor_ = *std::move(c);
    absl::StatusOr<std::unique_ptr<Display>> d =
        Display::Connect(compositor_->socket());
    ASSERT_TRUE(d.ok()) << d.status();
    display_ = *std::move(d);
  }

  Buffer Image(uint32_t fourcc, uint32_t w = 64, uint32_t h = 48) {
    absl::StatusOr<Buffer> b = client().Allocate(
        ImageDescriptor(w, h, fourcc, usage::kComposerOverlay));
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : Buffer(v1::BufferInfo(), UniqueFd());
  }

  std::unique_ptr<FakeCompositor> compositor_;
  std::unique_ptr<Display> display_;
};

TEST_F(DmabufTest, TheCompositorsFormatsAndModifiersAreKnown) {
  ASSERT_NE(display_->dmabuf(), nullptr);
  EXPECT_TRUE(display_->DmabufSupports(DRM_FORMAT_NV12, DRM_FORMAT_MOD_LINEAR));
  EXPECT_FALSE(display_->DmabufSupports(DRM_FORMAT_NV12, 1));
  EXPECT_FALSE(display_->DmabufSupports(DRM_FORMAT_ARGB8888,
                                        DRM_FORMAT_MOD_LINEAR));
  EXPECT_EQ(display_->shm(), nullptr);
}

// Every plane of the layout, with the buffer's own fd, in one params.
TEST_F(DmabufTest, EveryPlaneReachesTheCompositorAsLaidOut) {
  for (uint32_t fourcc : {DRM_FORMAT_XRGB8888, DRM_FORMAT_NV12}) {
    SCOPED_TRACE(FourccName(fourcc));
    Buffer b = Image(fourcc, 100, 30);
    absl::StatusOr<WlBuffer> wl =
        WlBuffer::CreateDmabufForTesting(*display_, b);
    ASSERT_TRUE(wl.ok()) << wl.status();
    EXPECT_EQ(wl->path(), BufferPath::kDmabuf);
    const std::vector<DmabufRequest> reqs = compositor_->requests();
    ASSERT_FALSE(reqs.empty());
    const DmabufRequest& r = reqs.back();
    EXPECT_TRUE(r.created);
    EXPECT_EQ(r.format, fourcc);
    EXPECT_EQ(r.width, 100);
    EXPECT_EQ(r.height, 30);
    struct stat st = {};
    ASSERT_EQ(fstat(b.fd(), &st), 0);
    const v1::BufferLayout& l = b.layout();
    ASSERT_EQ(r.planes.size(), static_cast<size_t>(l.planes_size()));
    for (int i = 0; i < l.planes_size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(r.planes[i].index, static_cast<uint32_t>(i));
      EXPECT_EQ(r.planes[i].offset, l.planes(i).offset());
      EXPECT_EQ(r.planes[i].stride, l.planes(i).stride());
      EXPECT_EQ(r.planes[i].modifier, l.modifier());
      EXPECT_EQ(r.planes[i].inode, st.st_ino) << "not the buffer's own file";
    }
  }
}

// Tests that need a compositor unlike the fixture's: a daemon and client
// of their own, a fake compositor offering XRGB8888 with one modifier (and
// answering after a delay), a display on it and one 64x48 XRGB8888 buffer.
class OwnCompositorTest : public ::testing::Test {
 protected:
  void Start(uint64_t modifier, absl::Duration answer_delay = absl::ZeroDuration()) {
    absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> daemon =
        halloc::testing::TestDaemon::Start();
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    absl::StatusOr<Client> client = daemon_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_.emplace(*std::move(client));
    absl::StatusOr<std::unique_ptr<FakeCompositor>> c = FakeCompositor::Start(
        {.formats = {{DRM_FORMAT_XRGB8888, modifier}}, .answer_delay = answer_delay});
    ASSERT_TRUE(c.ok()) << c.status();
    compositor_ = *std::move(c);
    absl::StatusOr<std::unique_ptr<Display>> d = Display::Connect(compositor_->socket());
    ASSERT_TRUE(d.ok()) << d.status();
    display_ = *std::move(d);
    absl::StatusOr<Buffer> b =
        client_->Allocate(ImageDescriptor(64, 48, DRM_FORMAT_XRGB8888, usage::kComposerOverlay));
    ASSERT_TRUE(b.ok()) << b.status();
    buffer_.emplace(*std::move(b));
  }

  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
  std::optional<Client> client_;
  std::unique_ptr<FakeCompositor> compositor_;
  std::unique_ptr<Display> display_;
  std::optional<Buffer> buffer_;
};

// A compositor without modifier support offers formats with the implicit
// modifier (DRM_FORMAT_MOD_INVALID) only: a LINEAR buffer goes to it as
// implicit, not refused (nor sent to wl_shm to be read by the CPU).
TEST_F(OwnCompositorTest, ALinearBufferGoesToAnImplicitModifierCompositor) {
  ASSERT_NO_FATAL_FAILURE(Start(DRM_FORMAT_MOD_INVALID));
  ASSERT_EQ(buffer_->layout().modifier(), DRM_FORMAT_MOD_LINEAR);
  absl::StatusOr<WlBuffer> wl = WlBuffer::CreateDmabufForTesting(*display_, *buffer_);
  ASSERT_TRUE(wl.ok()) << wl.status();
  const std::vector<DmabufRequest> reqs = compositor_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  ASSERT_FALSE(reqs[0].planes.empty());
  for (const auto& plane : reqs[0].planes) EXPECT_EQ(plane.modifier, DRM_FORMAT_MOD_INVALID);
  // A tiled layout is still refused there (implicit means linear here).
  EXPECT_FALSE(display_->DmabufModifierFor(DRM_FORMAT_XRGB8888, I915_FORMAT_MOD_X_TILED));
}

TEST_F(DmabufTest, AFormatNotOfferedIsRefusedBeforeAsking) {
  Buffer b = Image(DRM_FORMAT_ARGB8888);
  absl::StatusOr<WlBuffer> wl = WlBuffer::CreateDmabufForTesting(*display_, b);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition)
      << wl.status();
  EXPECT_NE(wl.status().message().find("AR24"), std::string::npos);
  EXPECT_TRUE(compositor_->requests().empty());
}

// A layout of more than 4 planes (hallocd makes none) is refused before
// anything is sent: linux-dmabuf's add() past plane 3 is a protocol error,
// which would end the connection.
TEST_F(DmabufTest, MoreThanFourPlanesAreRefusedBeforeAsking) {
  Buffer b = Image(DRM_FORMAT_NV12);
  v1::BufferInfo info = b.info();
  while (info.layout().planes_size() < 5) {
    *info.mutable_layout()->add_planes() = info.layout().planes(0);
  }
  Buffer five(std::move(info), UniqueFd(::dup(b.fd())));
  absl::StatusOr<WlBuffer> wl = WlBuffer::Create(*display_, five, BufferPath::kDmabuf);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kInvalidArgument) << wl.status();
  EXPECT_TRUE(compositor_->requests().empty());
  EXPECT_TRUE(display_->Roundtrip().ok()) << "the connection lives on";
}

TEST_F(DmabufTest, TheCompositorsRefusalIsAnError) {
  Buffer b = Image(DRM_FORMAT_YUYV);
  absl::StatusOr<WlBuffer> wl = WlBuffer::CreateDmabufForTesting(*display_, b);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kInternal) << wl.status();
  ASSERT_EQ(compositor_->requests().size(), 1u);
  EXPECT_FALSE(compositor_->requests()[0].created);
  EXPECT_TRUE(display_->Roundtrip().ok()) << "a refusal is not fatal";
}

// A compositor that ends the connection for a protocol error closes its end
// after sending the error: the next flush fails EPIPE, and the error is
// still to be read. It was reported as UNAVAILABLE "Broken pipe" (the
// code for "no compositor"), the reason left unread.
TEST_F(DmabufTest, AProtocolErrorIsReportedAfterTheCompositorClosed) {
  Buffer b = Image(DRM_FORMAT_XRGB8888);
  ASSERT_NE(display_->dmabuf(), nullptr);
  // create_immed, which this fake answers with a protocol error.
  zwp_linux_buffer_params_v1* params = zwp_linux_dmabuf_v1_create_params(display_->dmabuf());
  const v1::PlaneLayout& p = b.layout().planes(0);
  zwp_linux_buffer_params_v1_add(params, b.fd(), 0, static_cast<uint32_t>(p.offset()),
                                 static_cast<uint32_t>(p.stride()), 0, 0);
  wl_buffer* never =
      zwp_linux_buffer_params_v1_create_immed(params, 64, 48, DRM_FORMAT_XRGB8888, 0);
  ASSERT_GE(wl_display_flush(display_->display()), 0);
  // The compositor has closed its end once the socket hangs up.
  pollfd pfd = {.fd = wl_display_get_fd(display_->display()), .events = POLLIN, .revents = 0};
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (!(pfd.revents & POLLHUP) && absl::Now() < until) {
    ASSERT_GE(poll(&pfd, 1, 100), 0);
  }
  ASSERT_TRUE(pfd.revents & POLLHUP) << "the compositor kept the connection";
  const absl::Status s = display_->Roundtrip(absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("protocol error"), std::string::npos) << s;
  wl_buffer_destroy(never);
  zwp_linux_buffer_params_v1_destroy(params);
}

// A compositor slower than the caller's wait: the call fails, and the
// wl_buffer the compositor creates after all is destroyed when its answer
// arrives (else it would hold the dma-buf for the connection's life).
TEST_F(OwnCompositorTest, AnAnswerAfterTheWaitIsGivenBack) {
  ASSERT_NO_FATAL_FAILURE(Start(DRM_FORMAT_MOD_LINEAR, absl::Seconds(1)));
  absl::StatusOr<WlBuffer> wl =
      WlBuffer::CreateDmabufForTesting(*display_, *buffer_, absl::Milliseconds(50));
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kDeadlineExceeded) << wl.status();
  // Each roundtrip waits out the compositor's sleep, then reads the late
  // answer (the library destroys its wl_buffer); the next one has the
  // compositor read that destroy.
  for (int i = 0; i < 3 && (compositor_->requests().empty() || compositor_->live_buffers() != 0);
       ++i) {
    ASSERT_TRUE(display_->Roundtrip(absl::Seconds(10)).ok());
  }
  ASSERT_EQ(compositor_->requests().size(), 1u);
  EXPECT_TRUE(compositor_->requests()[0].created) << "the compositor did make it";
  EXPECT_EQ(compositor_->live_buffers(), 0) << "the late wl_buffer was kept";
  // The connection still works: a wait long enough gets a buffer.
  wl = WlBuffer::CreateDmabufForTesting(*display_, *buffer_, absl::Seconds(10));
  ASSERT_TRUE(wl.ok()) << wl.status();
  EXPECT_EQ(compositor_->live_buffers(), 1);
}

// The real entry point: a memfd is not a dma-buf, so linux-dmabuf is not
// for it: auto falls back to wl_shm (absent here, so refused by name), and
// an explicit dmabuf request says why.
TEST_F(DmabufTest, AMemfdNeverTakesTheDmabufPath) {
  Buffer b = Image(DRM_FORMAT_XRGB8888);
  ASSERT_FALSE(b.is_dmabuf());
  absl::StatusOr<WlBuffer> wl =
      WlBuffer::Create(*display_, b, BufferPath::kDmabuf);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(wl.status().message().find("not a dma-buf"), std::string::npos)
      << wl.status();
  wl = WlBuffer::Create(*display_, b);
  EXPECT_EQ(wl.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(wl.status().message().find("no wl_shm"), std::string::npos)
      << wl.status();
  EXPECT_TRUE(compositor_->requests().empty());
}

// A compositor without wl_compositor (or xdg-shell) cannot show a window:
// said by name.
TEST_F(DmabufTest, AWindowNeedsTheCompositorsSurfaceGlobals) {
  ASSERT_EQ(display_->compositor(), nullptr);
  ASSERT_EQ(display_->wm_base(), nullptr);
  absl::StatusOr<std::unique_ptr<Window>> w = Window::Create(*display_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kFailedPrecondition)
      << w.status();
  EXPECT_NE(w.status().message().find("wl_compositor"), std::string::npos)
      << w.status();
  PresenterOptions options;
  options.display = compositor_->socket();
  absl::StatusOr<std::unique_ptr<Presenter>> p = Presenter::Create(options);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition)
      << p.status();
}

}  // namespace
}  // namespace halloc::wayland
