// Layouts that do not fit their buffer (a buggy or hostile hallocd's) are
// refused with INVALID_ARGUMENT before anything is sent, and the connection
// lives on. Against a fake compositor (fake_compositor.h) that, like weston
// and wlroots, ends the connection for a linux-dmabuf plane out of bounds,
// and offers libwayland-server's wl_shm with NV12. The buffers are memfds
// laid out by hallocd's own code (service/layout).
#include <drm_fourcc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"
#include "clients/wayland/buffer.h"
#include "clients/wayland/display.h"
#include "clients/wayland/fake_compositor.h"
#include "gtest/gtest.h"
#include "linux-dmabuf-unstable-v1-client-protocol.h"
#include "service/layout/layout.h"

namespace halloc::wayland {
namespace {

using ::halloc::wayland::testing::FakeCompositor;

class BoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakeCompositor>> c =
        FakeCompositor::Start({.formats = {{DRM_FORMAT_XRGB8888, DRM_FORMAT_MOD_LINEAR},
                                           {DRM_FORMAT_NV12, DRM_FORMAT_MOD_LINEAR}},
                               .shm_formats = {DRM_FORMAT_NV12}});
    ASSERT_TRUE(c.ok()) << c.status();
    compositor_ = *std::move(c);
    absl::StatusOr<std::unique_ptr<Display>> d = Display::Connect(compositor_->socket());
    ASSERT_TRUE(d.ok()) << d.status();
    display_ = *std::move(d);
  }

  // What hallocd says of a `w`x`h` `fourcc` memfd: its layout, its size
  // (the layout's, in whole pages).
  static v1::BufferInfo Info(uint32_t fourcc, uint32_t w, uint32_t h) {
    v1::ImageDescriptor d;
    d.set_format(fourcc);
    d.set_width(w);
    d.set_height(h);
    absl::StatusOr<v1::BufferLayout> l = layout::Compute(d, 0);
    EXPECT_TRUE(l.ok()) << l.status();
    v1::BufferInfo info;
    info.set_id(1);
    info.set_backend("memfd");
    info.set_fd_kind(v1::FD_KIND_MEMFD);
    if (!l.ok()) return info;
    *info.mutable_layout() = *l;
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    info.set_size((l->size() + page - 1) / page * page);
    return info;
  }

  // `info` over a new memfd of `fd_size` bytes (info.size() by default).
  static Buffer Over(v1::BufferInfo info, std::optional<uint64_t> fd_size = std::nullopt) {
    UniqueFd fd(memfd_create("bounds-test", MFD_CLOEXEC));
    EXPECT_TRUE(fd);
    EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(fd_size.value_or(info.size()))), 0);
    return Buffer(std::move(info), std::move(fd));
  }

  // `info` with plane `i` at `offset`, `stride`.
  static v1::BufferInfo Moved(v1::BufferInfo info, int i, uint64_t offset, uint64_t stride) {
    info.mutable_layout()->mutable_planes(i)->set_offset(offset);
    info.mutable_layout()->mutable_planes(i)->set_stride(stride);
    return info;
  }

  static void ExpectRefused(const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }

  std::unique_ptr<FakeCompositor> compositor_;
  std::unique_ptr<Display> display_;
};

// The fake answers as weston does: a plane past the fd's end costs the
// connection (the protocol error the library's checks spare it).
TEST_F(BoundsTest, TheFakeCompositorEndsTheConnectionForAPlaneOutOfBounds) {
  const v1::BufferInfo info = Info(DRM_FORMAT_XRGB8888, 64, 48);
  Buffer b = Over(info);
  zwp_linux_buffer_params_v1* params = zwp_linux_dmabuf_v1_create_params(display_->dmabuf());
  zwp_linux_buffer_params_v1_add(params, b.fd(), 0, static_cast<uint32_t>(info.size()),
                                 static_cast<uint32_t>(info.layout().planes(0).stride()), 0, 0);
  zwp_linux_buffer_params_v1_create(params, 64, 48, DRM_FORMAT_XRGB8888, 0);
  const absl::Status s = display_->Roundtrip();
  EXPECT_NE(s.message().find("protocol error"), std::string::npos) << s;
  zwp_linux_buffer_params_v1_destroy(params);
}

// What weston and wlroots answer with out_of_bounds.
TEST_F(BoundsTest, ADmabufPlaneTheCompositorWouldCallOutOfBoundsIsRefused) {
  const v1::BufferInfo good = Info(DRM_FORMAT_XRGB8888, 64, 48);
  const uint64_t size = good.size(), stride = good.layout().planes(0).stride();
  ASSERT_EQ(stride * 48, size) << "the cases below assume a tight layout";
  struct Case {
    const char* what;
    uint64_t offset, stride;
  };
  for (const Case& c : {Case{"stride 0", 0, 0},
                        {"offset at the fd's end", size, stride},
                        {"plane 0 one row past the end", stride, stride},
                        {"offset + stride * height past 32 bits", 0, INT32_MAX}}) {
    SCOPED_TRACE(c.what);
    ExpectRefused(
        WlBuffer::CreateDmabufForTesting(*display_, Over(Moved(good, 0, c.offset, c.stride)))
            .status());
  }
  EXPECT_TRUE(compositor_->requests().empty()) << "sent";
  ASSERT_TRUE(display_->Roundtrip().ok()) << "the connection did not survive";
  EXPECT_TRUE(WlBuffer::CreateDmabufForTesting(*display_, Over(good)).ok());
}

// Past what the compositor checks (plane 0, and the fd only where it
// seeks) but not past what it reads: NV12's chroma rows, the layout's size.
TEST_F(BoundsTest, ADmabufChromaPlaneOrLayoutPastTheFdsEndIsRefused) {
  const v1::BufferInfo good = Info(DRM_FORMAT_NV12, 64, 48);
  const v1::PlaneLayout& chroma = good.layout().planes(1);
  // One chroma row left: offset + stride fits, its 24 rows do not.
  const v1::BufferInfo one_row = Moved(good, 1, good.size() - chroma.stride(), chroma.stride());
  absl::Status s = WlBuffer::CreateDmabufForTesting(*display_, Over(one_row)).status();
  ExpectRefused(s);
  EXPECT_NE(s.message().find("plane 1"), std::string::npos) << s;
  v1::BufferInfo long_layout = good;
  long_layout.mutable_layout()->set_size(good.size() + 1);
  ExpectRefused(WlBuffer::CreateDmabufForTesting(*display_, Over(long_layout)).status());
  EXPECT_TRUE(compositor_->requests().empty()) << "sent";
  ASSERT_TRUE(display_->Roundtrip().ok()) << "the connection did not survive";
  EXPECT_TRUE(WlBuffer::CreateDmabufForTesting(*display_, Over(good)).ok());
}

// libwayland-server checks a wl_shm buffer's plane 0 against the pool
// only; a compositor finds NV12's chroma rows after the luma rows, so a
// pool of the luma rows alone has it read past the pool's mapping. And a
// pool larger than its memfd has it read past the file's end.
TEST_F(BoundsTest, AWlShmPoolWithoutEveryPlaneOrLargerThanItsFdIsRefused) {
  const v1::BufferInfo good = Info(DRM_FORMAT_NV12, 64, 48);
  ASSERT_TRUE(display_->ShmSupports(ShmFormatFor(DRM_FORMAT_NV12)));
  const v1::PlaneLayout& luma = good.layout().planes(0);
  v1::BufferInfo luma_only = good;  // the fd keeps its real size
  luma_only.set_size(luma.offset() + luma.stride() * 48);
  ExpectRefused(
      WlBuffer::Create(*display_, Over(luma_only, good.size()), BufferPath::kShm).status());
  luma_only.mutable_layout()->set_size(luma_only.size());  // the layout's size agrees
  absl::Status s =
      WlBuffer::Create(*display_, Over(luma_only, good.size()), BufferPath::kShm).status();
  ExpectRefused(s);
  EXPECT_NE(s.message().find("plane 1"), std::string::npos) << s;
  v1::BufferInfo larger = good;
  larger.set_size(good.size() * 2);
  ExpectRefused(WlBuffer::Create(*display_, Over(larger, good.size()), BufferPath::kShm).status());
  EXPECT_EQ(compositor_->shm_pools(), 0) << "sent";
  ASSERT_TRUE(display_->Roundtrip().ok()) << "the connection did not survive";
  EXPECT_TRUE(WlBuffer::Create(*display_, Over(good), BufferPath::kShm).ok());
  ASSERT_TRUE(display_->Roundtrip().ok());
  EXPECT_EQ(compositor_->shm_pools(), 1);
}

}  // namespace
}  // namespace halloc::wayland
