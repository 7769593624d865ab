// pattern.h on hand-made layouts: bars at known columns, the scroll, the
// counter read back, in every format it draws.
#include "clients/camera/pattern.h"

#include <drm_fourcc.h>

#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"

namespace halloc::camera {
namespace {

v1::BufferLayout Layout(uint32_t format, uint32_t w, uint32_t h) {
  v1::BufferLayout l;
  l.set_format(format);
  l.set_width(w);
  l.set_height(h);
  l.set_layer_count(1);
  uint64_t stride = format == DRM_FORMAT_YUYV ? 2 * w : format == DRM_FORMAT_NV12 ? w : 4 * w;
  stride += 64;  // padding, so stride is honoured
  v1::PlaneLayout* p = l.add_planes();
  p->set_stride(stride);
  p->set_size(stride * h);
  if (format == DRM_FORMAT_NV12) {
    v1::PlaneLayout* uv = l.add_planes();
    uv->set_offset(stride * h);
    uv->set_stride(stride);
    uv->set_size(stride * h / 2);
  }
  l.set_size(format == DRM_FORMAT_NV12 ? stride * h * 3 / 2 : stride * h);
  return l;
}

bool Near(Rgb a, Rgb b) {
  return std::abs(a.r - b.r) <= 6 && std::abs(a.g - b.g) <= 6 &&
         std::abs(a.b - b.b) <= 6;
}

class PatternTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(PatternTest, BarsScrollAndCounterReadsBack) {
  const v1::BufferLayout l = Layout(GetParam(), 320, 96);
  std::vector<uint8_t> data(l.size(), 0);
  for (uint32_t seq : {0u, 1u, 7u, 12345678u, 123456789u}) {
    SCOPED_TRACE(seq);
    ASSERT_TRUE(Draw(l, data.data(), data.size(), seq).ok());
    absl::StatusOr<uint32_t> counter = ReadCounter(l, data.data(), data.size());
    ASSERT_TRUE(counter.ok()) << counter.status();
    EXPECT_EQ(*counter, seq % 100000000);
    // Bar centres in a row below the counter box, independent of BarAt.
    for (int bar = 0; bar < kBars; ++bar) {
      const uint32_t x = (bar * 40 + 20 + 320 - (seq * kScrollPixels) % 320) % 320;
      absl::StatusOr<Rgb> c = PixelAt(l, data.data(), data.size(), x, 80);
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_TRUE(Near(*c, BarColour(bar)))
          << "bar " << bar << " at x=" << x << ": " << int(c->r) << ","
          << int(c->g) << "," << int(c->b);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, PatternTest,
                         ::testing::Values(DRM_FORMAT_XRGB8888, DRM_FORMAT_ARGB8888,
                                           DRM_FORMAT_YUYV, DRM_FORMAT_NV12));

TEST(Pattern, BarColoursAreVividsOrder) {
  EXPECT_TRUE(Near(BarColour(0), {255, 255, 255}));
  EXPECT_TRUE(Near(BarColour(1), {255, 255, 0}));
  EXPECT_TRUE(Near(BarColour(7), {0, 0, 0}));
  EXPECT_EQ(BarAt(0, 640, 0), 0);
  EXPECT_EQ(BarAt(639, 640, 0), 7);
  EXPECT_EQ(BarAt(80 - kScrollPixels, 640, 1), 1) << "bars move left";
}

TEST(Pattern, RefusesWhatItCannotDraw) {
  v1::BufferLayout l = Layout(DRM_FORMAT_XRGB8888, 64, 64);
  std::vector<uint8_t> small(l.size() - 1);
  EXPECT_EQ(Draw(l, small.data(), small.size(), 0).code(),
            absl::StatusCode::kInvalidArgument);
  l.set_format(DRM_FORMAT_RGB565);
  std::vector<uint8_t> data(l.size());
  EXPECT_EQ(Draw(l, data.data(), data.size(), 0).code(),
            absl::StatusCode::kUnimplemented);
  v1::BufferLayout tiny = Layout(DRM_FORMAT_XRGB8888, 64, 16);
  std::vector<uint8_t> t(tiny.size());
  ASSERT_TRUE(Draw(tiny, t.data(), t.size(), 3).ok()) << "bars only";
  EXPECT_EQ(ReadCounter(tiny, t.data(), t.size()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(Pattern, CounterOfAnotherPictureIsNotFound) {
  const v1::BufferLayout l = Layout(DRM_FORMAT_XRGB8888, 320, 96);
  std::vector<uint8_t> data(l.size(), 0xff);
  EXPECT_EQ(ReadCounter(l, data.data(), data.size()).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace halloc::camera
