#include "service/layout/format.h"

#include <drm_fourcc.h>

#include <cstdint>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace halloc::format {
namespace {

struct Required {
  uint32_t fourcc;
  const char* name;
  int planes;
  bool yuv;
};

// Issue 3's list.
constexpr Required kRequired[] = {
    {DRM_FORMAT_ARGB8888, "ARGB8888", 1, false},
    {DRM_FORMAT_XRGB8888, "XRGB8888", 1, false},
    {DRM_FORMAT_ABGR8888, "ABGR8888", 1, false},
    {DRM_FORMAT_XBGR8888, "XBGR8888", 1, false},
    {DRM_FORMAT_RGBA8888, "RGBA8888", 1, false},
    {DRM_FORMAT_BGRA8888, "BGRA8888", 1, false},
    {DRM_FORMAT_RGB888, "RGB888", 1, false},
    {DRM_FORMAT_BGR888, "BGR888", 1, false},
    {DRM_FORMAT_RGB565, "RGB565", 1, false},
    {DRM_FORMAT_BGR565, "BGR565", 1, false},
    {DRM_FORMAT_ARGB2101010, "ARGB2101010", 1, false},
    {DRM_FORMAT_ABGR2101010, "ABGR2101010", 1, false},
    {DRM_FORMAT_XRGB2101010, "XRGB2101010", 1, false},
    {DRM_FORMAT_ABGR16161616F, "ABGR16161616F", 1, false},
    {DRM_FORMAT_R8, "R8", 1, false},
    {DRM_FORMAT_R16, "R16", 1, false},
    {DRM_FORMAT_GR88, "GR88", 1, false},
    {DRM_FORMAT_RG88, "RG88", 1, false},
    {DRM_FORMAT_NV12, "NV12", 2, true},
    {DRM_FORMAT_NV21, "NV21", 2, true},
    {DRM_FORMAT_NV16, "NV16", 2, true},
    {DRM_FORMAT_NV61, "NV61", 2, true},
    {DRM_FORMAT_NV24, "NV24", 2, true},
    {DRM_FORMAT_P010, "P010", 2, true},
    {DRM_FORMAT_YUV420, "YUV420", 3, true},
    {DRM_FORMAT_YVU420, "YVU420", 3, true},
    {DRM_FORMAT_YUYV, "YUYV", 1, true},
    {DRM_FORMAT_YVYU, "YVYU", 1, true},
    {DRM_FORMAT_UYVY, "UYVY", 1, true},
    {DRM_FORMAT_VYUY, "VYUY", 1, true},
    {DRM_FORMAT_AYUV, "AYUV", 1, true},
};

TEST(Format, EveryRequiredFormatIsInTheTable) {
  EXPECT_EQ(All().size(), std::size(kRequired));
  for (const Required& r : kRequired) {
    SCOPED_TRACE(r.name);
    const FormatInfo* f = Find(r.fourcc);
    ASSERT_NE(f, nullptr);
    EXPECT_STREQ(f->name, r.name);
    EXPECT_EQ(f->num_planes, r.planes);
    EXPECT_EQ(f->is_yuv, r.yuv);
    EXPECT_EQ(f->android_yv12, r.fourcc == DRM_FORMAT_YVU420);
  }
}

bool IsPowerOfTwo(unsigned v) { return v != 0 && (v & (v - 1)) == 0; }

TEST(Format, TableIsConsistent) {
  std::set<uint32_t> seen;
  for (const FormatInfo& f : All()) {
    SCOPED_TRACE(f.name);
    EXPECT_TRUE(seen.insert(f.fourcc).second) << "duplicate";
    ASSERT_GE(f.num_planes, 1);
    ASSERT_LE(f.num_planes, kMaxPlanes);
    EXPECT_EQ(f.planes[0].h_sub, 1);
    EXPECT_EQ(f.planes[0].v_sub, 1);
    for (int i = 0; i < f.num_planes; ++i) {
      const PlaneInfo& p = f.planes[i];
      SCOPED_TRACE(i);
      EXPECT_TRUE(IsPowerOfTwo(p.h_sub) && IsPowerOfTwo(p.v_sub));
      EXPECT_TRUE(IsPowerOfTwo(p.block_width));
      EXPECT_TRUE(IsPowerOfTwo(p.min_stride_alignment));
      EXPECT_EQ(p.sample_increment_bits * p.block_width, p.block_bytes * 8);
      ASSERT_GE(p.num_components, 1);
      uint64_t used = 0;  // components must not overlap inside a block
      for (int c = 0; c < p.num_components; ++c) {
        const Component& comp = p.components[c];
        ASSERT_NE(comp.type, nullptr);
        EXPECT_LE(comp.offset_bits + comp.size_bits, p.block_bytes * 8);
        uint64_t bits = ((uint64_t{1} << comp.size_bits) - 1) << comp.offset_bits;
        if (comp.size_bits == 64) bits = ~uint64_t{0};
        EXPECT_EQ(used & bits, 0u) << comp.type;
        used |= bits;
      }
    }
  }
}

TEST(Format, NamesRoundTrip) {
  for (const FormatInfo& f : All()) {
    SCOPED_TRACE(f.name);
    EXPECT_EQ(Name(f.fourcc), f.name);
    EXPECT_EQ(*ParseName(f.name), f.fourcc);
    std::string lower = f.name;
    for (char& c : lower) c = static_cast<char>(tolower(c));
    EXPECT_EQ(*ParseName(lower), f.fourcc);
    EXPECT_EQ(*ParseName(std::string("DRM_FORMAT_") + f.name), f.fourcc);
  }
}

TEST(Format, AliasesAndCodes) {
  EXPECT_EQ(*ParseName("YV12"), DRM_FORMAT_YVU420);
  EXPECT_EQ(*ParseName("yv12"), DRM_FORMAT_YVU420);
  EXPECT_EQ(*ParseName("I420"), DRM_FORMAT_YUV420);
  EXPECT_EQ(*ParseName("YU12"), DRM_FORMAT_YUV420);
  EXPECT_EQ(*ParseName("AR24"), DRM_FORMAT_ARGB8888);
  EXPECT_EQ(*ParseName("xr24"), DRM_FORMAT_XRGB8888);
  EXPECT_EQ(*ParseName("RG16"), DRM_FORMAT_RGB565);
  EXPECT_EQ(*ParseName(" nv12 "), DRM_FORMAT_NV12);
  EXPECT_EQ(*ParseName("0x3231564e"), DRM_FORMAT_NV12);
  EXPECT_EQ(*ParseName("BLOB"), kBlob);
  EXPECT_EQ(Name(kBlob), "BLOB");
  EXPECT_EQ(Find(kBlob), nullptr);
}

TEST(Format, Unknown) {
  EXPECT_EQ(Find(DRM_FORMAT_XRGB4444), nullptr);
  EXPECT_EQ(Name(DRM_FORMAT_XRGB4444), "0x32315258");
  EXPECT_EQ(*ParseName(Name(DRM_FORMAT_XRGB4444)), DRM_FORMAT_XRGB4444);
  for (const char* bad : {"", "FOO", "NV13", "0x", "0x123456789", "0x-1"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(ParseName(bad).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace halloc::format
