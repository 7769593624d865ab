// ReconcileWithDriver: whether a V4L2 driver writes each frame where
// hallocd's layout says consumers read it (v4l2_camera.cc asks it after
// S_FMT and after the buffers come; vivid drives it in the guest).
#include <drm_fourcc.h>
#include <linux/videodev2.h>

#include <string>

#include "absl/status/status.h"
#include "clients/camera/camera.h"
#include "gtest/gtest.h"

namespace halloc::camera {
namespace {

// What a driver negotiates for a 64x48 NV12 frame, 64-byte rows, and the
// layout that matches it.
StreamFormat Nv12Driver() {
  StreamFormat f;
  f.v4l2_format = V4L2_PIX_FMT_NV12;
  f.drm_format = DRM_FORMAT_NV12;
  f.width = 64;
  f.height = 48;
  f.bytesperline = 64;
  f.sizeimage = 64 * 48 * 3 / 2;
  return f;
}
v1::BufferLayout Nv12Layout() {
  v1::BufferLayout l;
  l.set_format(DRM_FORMAT_NV12);
  l.set_width(64);
  l.set_height(48);
  l.set_size(64 * 48 * 3 / 2);
  v1::PlaneLayout* y = l.add_planes();
  y->set_offset(0);
  y->set_stride(64);
  y->set_size(64 * 48);
  v1::PlaneLayout* uv = l.add_planes();
  uv->set_offset(64 * 48);
  uv->set_stride(64);
  uv->set_size(64 * 24);
  return l;
}

void ExpectRefused(const StreamFormat& driver, const v1::BufferLayout& layout,
                   const std::string& why) {
  const absl::Status s = ReconcileWithDriver(driver, layout, "/dev/video9");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << why << ": " << s;
  EXPECT_NE(s.message().find(why), std::string::npos) << s;
  EXPECT_NE(s.message().find("/dev/video9"), std::string::npos) << s;
}

TEST(ReconcileTest, AMatchingLayoutIsTaken) {
  EXPECT_TRUE(ReconcileWithDriver(Nv12Driver(), Nv12Layout(), "/dev/video9").ok());
  // A layout with room to spare (hallocd's alignment) is fine too.
  v1::BufferLayout roomy = Nv12Layout();
  roomy.set_size(roomy.size() + 4096);
  EXPECT_TRUE(ReconcileWithDriver(Nv12Driver(), roomy, "/dev/video9").ok());
}

// The driver writes from byte 0 of the buffer: a layout that puts the
// first plane further in would have every consumer read the frame
// shifted.
TEST(ReconcileTest, TheFirstPlaneMustStartAtByteZero) {
  v1::BufferLayout l = Nv12Layout();
  l.mutable_planes(0)->set_offset(4096);
  ExpectRefused(Nv12Driver(), l, "plane 0 at byte 0, hallocd at 4096");
}

// NV12 is two planes in the one memory plane: a layout of one (or three)
// would have consumers find no chroma, or chroma where there is none.
TEST(ReconcileTest, TheLayoutHasTheFormatsPlanes) {
  v1::BufferLayout one = Nv12Layout();
  one.mutable_planes()->RemoveLast();
  ExpectRefused(Nv12Driver(), one, "writes 2 plane(s), hallocd's layout has 1");
  v1::BufferLayout three = Nv12Layout();
  *three.add_planes() = three.planes(1);
  ExpectRefused(Nv12Driver(), three, "writes 2 plane(s), hallocd's layout has 3");
  StreamFormat xrgb;
  xrgb.v4l2_format = V4L2_PIX_FMT_XBGR32;
  xrgb.width = 64;
  xrgb.height = 48;
  xrgb.bytesperline = 256;
  xrgb.sizeimage = 256 * 48;
  v1::BufferLayout packed = Nv12Layout();
  packed.mutable_planes()->RemoveLast();
  packed.mutable_planes(0)->set_stride(256);
  packed.set_size(256 * 48);
  EXPECT_TRUE(ReconcileWithDriver(xrgb, packed, "/dev/video9").ok());
  ExpectRefused(xrgb, Nv12Layout(), "writes 1 plane(s), hallocd's layout has 2");
}

TEST(ReconcileTest, StridesChromaPlacementAndSizeMustMatch) {
  v1::BufferLayout l = Nv12Layout();
  l.mutable_planes(1)->set_stride(128);
  ExpectRefused(Nv12Driver(), l, "bytesperline 64 differs from hallocd's stride 128");
  l = Nv12Layout();
  l.mutable_planes(1)->set_offset(64 * 48 + 64);
  ExpectRefused(Nv12Driver(), l, "plane 1 at byte 3072, hallocd at 3136");
  l = Nv12Layout();
  l.set_size(64 * 48);
  ExpectRefused(Nv12Driver(), l, "sizeimage 4608 is larger than hallocd's 3072");
  StreamFormat unknown = Nv12Driver();
  unknown.v4l2_format = V4L2_PIX_FMT_MJPEG;
  ExpectRefused(unknown, Nv12Layout(), "not a camera format");
}

// A short frame is one that ends before the frame's data (each plane's
// rows at bytesperline), not before sizeimage, which a driver may pad.
TEST(ReconcileTest, AFramesBytesAreItsPlanesRows) {
  StreamFormat nv12 = Nv12Driver();
  nv12.sizeimage += 4096;  // padded
  EXPECT_EQ(FrameBytes(nv12), 64u * 48 + 64u * 24);
  nv12.height = 47;  // odd: the chroma plane has ceil(47 / 2) rows
  EXPECT_EQ(FrameBytes(nv12), 64u * 47 + 64u * 24);
  StreamFormat xrgb;
  xrgb.v4l2_format = V4L2_PIX_FMT_XBGR32;
  xrgb.height = 48;
  xrgb.bytesperline = 256;
  EXPECT_EQ(FrameBytes(xrgb), 256u * 48);
  xrgb.v4l2_format = V4L2_PIX_FMT_MJPEG;
  EXPECT_EQ(FrameBytes(xrgb), 0u);
}

// V4L2's buffer lengths are 32 bits: a larger buffer is queued as 4 GiB
// less one byte (room for any frame), never as its size modulo 2^32.
TEST(ReconcileTest, ABufferPast4GiBIsQueuedWithTheLargestLength) {
  EXPECT_EQ(V4l2Length(4096), 4096u);
  EXPECT_EQ(V4l2Length(uint64_t{UINT32_MAX}), UINT32_MAX);
  EXPECT_EQ(V4l2Length(uint64_t{1} << 32), UINT32_MAX);
  EXPECT_EQ(V4l2Length((uint64_t{1} << 32) + 4096), UINT32_MAX);
  EXPECT_EQ(V4l2Length(UINT64_MAX), UINT32_MAX);
}

}  // namespace
}  // namespace halloc::camera
