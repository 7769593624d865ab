// CheckShmLayout against the layouts hallocd computes (service/layout):
// which of them wl_shm's one offset and stride can describe.
#include <drm_fourcc.h>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "clients/wayland/buffer.h"
#include "gtest/gtest.h"
#include "service/layout/layout.h"

namespace halloc::wayland {
namespace {

v1::BufferLayout LayoutOf(uint32_t format, uint32_t w, uint32_t h) {
  v1::ImageDescriptor d;
  d.set_format(format);
  d.set_width(w);
  d.set_height(h);
  absl::StatusOr<v1::BufferLayout> l = layout::Compute(d, 0);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : v1::BufferLayout();
}

TEST(ShmLayoutTest, PackedAndEvenPlanarLayoutsAreDescribed) {
  for (auto [format, w, h] : {std::tuple{DRM_FORMAT_XRGB8888, 641u, 11u},
                              {DRM_FORMAT_NV12, 640u, 480u},
                              {DRM_FORMAT_NV12, 101u, 51u},  // two planes: rows of plane 0 only
                              {DRM_FORMAT_P010, 1920u, 1080u},
                              {DRM_FORMAT_YUV420, 640u, 480u},
                              {DRM_FORMAT_YVU420, 1920u, 1080u}}) {
    SCOPED_TRACE(FourccName(format) + " " + std::to_string(w) + "x" + std::to_string(h));
    EXPECT_TRUE(CheckShmLayout(1, LayoutOf(format, w, h)).ok())
        << CheckShmLayout(1, LayoutOf(format, w, h));
  }
}

// Android's YV12 pads chroma rows to 16 bytes: 40 pixels wide, luma rows
// of 48 bytes but chroma rows of 32, not wl_shm's 24.
TEST(ShmLayoutTest, PaddedYv12ChromaRowsAreRefused) {
  absl::Status s = CheckShmLayout(7, LayoutOf(DRM_FORMAT_YVU420, 40, 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "buffer 7: plane 1")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "stride 32")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "stride 24")) << s;
}

// An odd height: hallocd gives each chroma plane the half row over (6 rows
// of 11), a compositor counts 5, so the third plane starts elsewhere.
TEST(ShmLayoutTest, AnOddHeightOfAThreePlaneFormatIsRefused) {
  const v1::BufferLayout l = LayoutOf(DRM_FORMAT_YUV420, 64, 11);
  ASSERT_EQ(l.planes_size(), 3);
  absl::Status s = CheckShmLayout(1, l);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "plane 2")) << s;
}

}  // namespace
}  // namespace halloc::wayland
