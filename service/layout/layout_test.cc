#include "service/layout/layout.h"

#include <drm_fourcc.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/layout/format.h"

namespace halloc::layout {
namespace {

using ::testing::HasSubstr;
using v1::BufferLayout;
using v1::ImageDescriptor;

ImageDescriptor Image(uint32_t format, uint32_t w, uint32_t h,
                      uint32_t layers = 0, uint64_t modifier = 0) {
  ImageDescriptor d;
  d.set_format(format);
  d.set_width(w);
  d.set_height(h);
  d.set_layer_count(layers);
  d.set_modifier(modifier);
  return d;
}

struct Plane {
  uint64_t offset, stride, size;
};

void ExpectPlanes(const BufferLayout& l, const std::vector<Plane>& want,
                  uint64_t total) {
  ASSERT_EQ(l.planes_size(), static_cast<int>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(l.planes(i).offset(), want[i].offset);
    EXPECT_EQ(l.planes(i).stride(), want[i].stride);
    EXPECT_EQ(l.planes(i).size(), want[i].size);
  }
  EXPECT_EQ(l.size(), total);
}

// ---- Golden sweep: every format, tight usage, computed here by hand ----

// The test's own description of each format (not the library's table):
// bytes per sample of each plane, its subsampling, and whether whole pixel
// pairs are packed (4:2:2 packed: 2 pixels in 4 bytes).
struct Spec {
  uint32_t fourcc;
  std::vector<int> bytes;  // per plane, per sample
  int h_sub, v_sub;        // of the chroma planes
  bool pairs;              // width must be rounded up to even
};

const std::vector<Spec>& Specs() {
  static const auto* specs = new std::vector<Spec>{
      {DRM_FORMAT_ARGB8888, {4}, 1, 1, false},
      {DRM_FORMAT_XRGB8888, {4}, 1, 1, false},
      {DRM_FORMAT_ABGR8888, {4}, 1, 1, false},
      {DRM_FORMAT_XBGR8888, {4}, 1, 1, false},
      {DRM_FORMAT_RGBA8888, {4}, 1, 1, false},
      {DRM_FORMAT_BGRA8888, {4}, 1, 1, false},
      {DRM_FORMAT_RGB888, {3}, 1, 1, false},
      {DRM_FORMAT_BGR888, {3}, 1, 1, false},
      {DRM_FORMAT_RGB565, {2}, 1, 1, false},
      {DRM_FORMAT_BGR565, {2}, 1, 1, false},
      {DRM_FORMAT_ARGB2101010, {4}, 1, 1, false},
      {DRM_FORMAT_ABGR2101010, {4}, 1, 1, false},
      {DRM_FORMAT_XRGB2101010, {4}, 1, 1, false},
      {DRM_FORMAT_ABGR16161616F, {8}, 1, 1, false},
      {DRM_FORMAT_R8, {1}, 1, 1, false},
      {DRM_FORMAT_R16, {2}, 1, 1, false},
      {DRM_FORMAT_GR88, {2}, 1, 1, false},
      {DRM_FORMAT_RG88, {2}, 1, 1, false},
      {DRM_FORMAT_NV12, {1, 2}, 2, 2, true},
      {DRM_FORMAT_NV21, {1, 2}, 2, 2, true},
      {DRM_FORMAT_NV16, {1, 2}, 2, 1, true},
      {DRM_FORMAT_NV61, {1, 2}, 2, 1, true},
      {DRM_FORMAT_NV24, {1, 2}, 1, 1, false},
      {DRM_FORMAT_P010, {2, 4}, 2, 2, true},
      {DRM_FORMAT_YUV420, {1, 1, 1}, 2, 2, true},
      {DRM_FORMAT_YVU420, {1, 1, 1}, 2, 2, true},  // + Android rules below
      {DRM_FORMAT_YUYV, {2}, 1, 1, true},
      {DRM_FORMAT_YVYU, {2}, 1, 1, true},
      {DRM_FORMAT_UYVY, {2}, 1, 1, true},
      {DRM_FORMAT_VYUY, {2}, 1, 1, true},
      {DRM_FORMAT_AYUV, {4}, 1, 1, false},
  };
  return *specs;
}

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Tight layout (no usage alignment), one layer.
std::vector<Plane> Golden(const Spec& s, uint64_t w, uint64_t h,
                          uint64_t* total) {
  uint64_t pw = s.pairs ? RoundUp(w, 2) : w;  // padded width
  std::vector<Plane> planes;
  uint64_t offset = 0;
  for (size_t i = 0; i < s.bytes.size(); ++i) {
    uint64_t hs = i == 0 ? 1 : s.h_sub, vs = i == 0 ? 1 : s.v_sub;
    uint64_t stride = pw / hs * s.bytes[i];
    if (s.fourcc == DRM_FORMAT_YVU420) {  // Android YV12
      stride = i == 0 ? RoundUp(w, 16) : RoundUp(RoundUp(w, 16) / 2, 16);
    }
    uint64_t size = stride * ((h + vs - 1) / vs);
    planes.push_back({offset, stride, size});
    offset += size;
  }
  *total = offset;
  return planes;
}

TEST(Golden, EveryFormatEverySize) {
  EXPECT_EQ(Specs().size(), format::All().size());
  const std::pair<uint32_t, uint32_t> sizes[] = {
      {1, 1},     {2, 2},    {3, 5},      {64, 64},   {101, 51},
      {640, 480}, {719, 577}, {1920, 1080}, {3840, 2160}, {4095, 1}};
  for (const Spec& s : Specs()) {
    for (auto [w, h] : sizes) {
      SCOPED_TRACE(format::Name(s.fourcc) + " " + std::to_string(w) + "x" +
                   std::to_string(h));
      absl::StatusOr<BufferLayout> l = Compute(Image(s.fourcc, w, h), 0);
      if (s.fourcc == DRM_FORMAT_YVU420 && (w % 2 != 0 || h % 2 != 0)) {
        EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument) << "odd YV12";
        continue;  // Android's formula takes even sizes only
      }
      ASSERT_TRUE(l.ok()) << l.status();
      uint64_t total = 0;
      std::vector<Plane> want = Golden(s, w, h, &total);
      ExpectPlanes(*l, want, total);
      EXPECT_EQ(l->layer_stride(), total);
      EXPECT_EQ(l->layer_count(), 1u);
      EXPECT_EQ(l->format(), s.fourcc);
      EXPECT_EQ(l->modifier(), DRM_FORMAT_MOD_LINEAR);
      // CPU and camera usages add no alignment: same layout.
      absl::StatusOr<BufferLayout> cam = Compute(
          Image(s.fourcc, w, h),
          usage::kCameraOutput | usage::kCpuReadOften | usage::kCpuWriteOften);
      ASSERT_TRUE(cam.ok());
      ExpectPlanes(*cam, want, total);
    }
  }
}

// ---- Literal goldens from the issue and worked by hand ----

TEST(Golden, Nv12_1080p) {
  for (uint64_t u : {uint64_t{0}, usage::kCameraOutput | usage::kComposerOverlay,
                     usage::kGpuTexture}) {
    SCOPED_TRACE(usage::ToString(u));
    BufferLayout l = *Compute(Image(DRM_FORMAT_NV12, 1920, 1080), u);
    ExpectPlanes(l, {{0, 1920, 2073600}, {2073600, 1920, 1036800}}, 3110400);
    EXPECT_EQ(l.planes(1).horizontal_subsampling(), 2u);
    EXPECT_EQ(l.planes(1).vertical_subsampling(), 2u);
    EXPECT_EQ(l.planes(1).width_in_samples(), 960u);
    EXPECT_EQ(l.planes(1).height_in_samples(), 540u);
    EXPECT_EQ(l.planes(1).sample_increment_bits(), 16u);
    ASSERT_EQ(l.planes(1).components_size(), 2);
    EXPECT_EQ(l.planes(1).components(0).type(), "CB");
    EXPECT_EQ(l.planes(1).components(1).type(), "CR");
    EXPECT_EQ(l.planes(1).components(1).offset_bits(), 8u);
  }
}

TEST(Golden, Nv12OddSizeRoundsChromaUp) {
  BufferLayout l = *Compute(Image(DRM_FORMAT_NV12, 101, 51), 0);
  // Width padded to 102 so the 51 CbCr pairs fit; 26 chroma rows.
  ExpectPlanes(l, {{0, 102, 5202}, {5202, 102, 2652}}, 7854);
  EXPECT_EQ(l.planes(1).width_in_samples(), 51u);
  EXPECT_EQ(l.planes(1).height_in_samples(), 26u);
}

TEST(Golden, Yv12AndroidAlignment) {
  // 1920x1080: y stride 1920, c stride 960, Cr then Cb.
  BufferLayout a = *Compute(Image(DRM_FORMAT_YVU420, 1920, 1080), 0);
  ExpectPlanes(a,
               {{0, 1920, 2073600}, {2073600, 960, 518400},
                {2592000, 960, 518400}},
               3110400);
  EXPECT_EQ(a.planes(1).components(0).type(), "CR");
  EXPECT_EQ(a.planes(2).components(0).type(), "CB");
  // 102x50: y stride align(102,16)=112, c stride align(56,16)=64, 25 rows.
  BufferLayout b = *Compute(Image(*format::ParseName("YV12"), 102, 50), 0);
  ExpectPlanes(b, {{0, 112, 5600}, {5600, 64, 1600}, {7200, 64, 1600}}, 8800);
  // Odd sizes: Android's c_size = c_stride * height / 2 would be a row
  // short of what 4:2:0 needs (it was laid out as 101x51's 26 rows, which
  // an Android client reading the formula did not find).
  for (auto [w, h] : {std::pair{101u, 50u}, std::pair{102u, 51u}}) {
    EXPECT_EQ(Compute(Image(DRM_FORMAT_YVU420, w, h), 0).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // 40x10: y stride 48 but c stride align(24,16)=32, not 24.
  BufferLayout c = *Compute(Image(DRM_FORMAT_YVU420, 40, 10), 0);
  ExpectPlanes(c, {{0, 48, 480}, {480, 32, 160}, {640, 32, 160}}, 800);
}

TEST(Golden, Yv12KeepsAndroidFormulaUnderUsageAlignment) {
  // GPU: stride 64 → luma 128 so chroma = 128/2 = 64 = align(64, 16).
  BufferLayout g = *Compute(Image(DRM_FORMAT_YVU420, 100, 10),
                            usage::kGpuTexture);
  ExpectPlanes(g, {{0, 128, 1280}, {1280, 64, 320}, {1600, 64, 320}}, 1920);
  // Usages whose devices pad rows (a decoder's 64-row CTBs, an encoder's
  // macroblocks, a JPEG encoder's 16-row MCUs) are refused: the formula has
  // no room for them. A decoder got a 4096-byte buffer for 100x10 whose
  // luma alone it would write 64 rows of 128 bytes into.
  for (uint64_t u : {usage::kVideoDecoder, usage::kVideoEncoder, usage::kHwImageEncoder}) {
    SCOPED_TRACE(usage::ToString(u));
    absl::Status s = Compute(Image(DRM_FORMAT_YVU420, 100, 10), u).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(s.message(), "use NV12")) << s;
  }
}

// What a GPU usage promises beyond a pitch: a cube map's six faces per
// layer set, a complete mip chain (not laid out: refused). Both were
// accepted as one plain layer.
TEST(Layout, CubeMapsTakeWholeFacesAndMipChainsAreRefused) {
  EXPECT_EQ(Compute(Image(DRM_FORMAT_ABGR8888, 256, 256, 1), usage::kGpuCubeMap).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<BufferLayout> cube =
      Compute(Image(DRM_FORMAT_ABGR8888, 256, 256, 12), usage::kGpuCubeMap);
  ASSERT_TRUE(cube.ok()) << cube.status();
  EXPECT_EQ(cube->layer_count(), 12u);
  absl::Status mips = Compute(Image(DRM_FORMAT_ABGR8888, 256, 256, 6),
                              usage::kGpuCubeMap | usage::kGpuMipmapComplete)
                          .status();
  EXPECT_EQ(mips.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(mips.message(), "MIPMAP")) << mips;
}

// A 3-byte format's padded stride stays a whole number of pixels: 100
// pixels of RGB888 for a GPU were 320 bytes (106.67 pixels).
TEST(Layout, PaddedStridesAreWholePixels) {
  for (uint32_t fourcc : {DRM_FORMAT_RGB888, DRM_FORMAT_BGR888}) {
    absl::StatusOr<BufferLayout> l = Compute(Image(fourcc, 100, 1), usage::kGpuTexture);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ(l->planes(0).stride(), 384u);  // lcm(64, 3) = 192: 300 rounds to 384
    EXPECT_EQ(l->planes(0).stride() % 3, 0u);
    EXPECT_EQ(l->planes(0).stride() % 64, 0u);
  }
}

TEST(Golden, P010) {
  BufferLayout l = *Compute(Image(DRM_FORMAT_P010, 1920, 1080), 0);
  ExpectPlanes(l, {{0, 3840, 4147200}, {4147200, 3840, 2073600}}, 6220800);
  EXPECT_EQ(l.planes(0).components(0).type(), "Y");
  EXPECT_EQ(l.planes(0).components(0).offset_bits(), 6u);
  EXPECT_EQ(l.planes(0).components(0).size_bits(), 10u);
  EXPECT_EQ(l.planes(1).components(1).type(), "CR");
  EXPECT_EQ(l.planes(1).components(1).offset_bits(), 22u);
  EXPECT_EQ(l.planes(1).sample_increment_bits(), 32u);
  // Odd: 33x7 → width 34 → stride 68; chroma 17 pairs of 4 bytes, 4 rows.
  BufferLayout odd = *Compute(Image(DRM_FORMAT_P010, 33, 7), 0);
  ExpectPlanes(odd, {{0, 68, 476}, {476, 68, 272}}, 748);
}

TEST(Golden, OddSizesOfOtherSubsampledFormats) {
  ExpectPlanes(*Compute(Image(DRM_FORMAT_YUV420, 101, 51), 0),
               {{0, 102, 5202}, {5202, 51, 1326}, {6528, 51, 1326}}, 7854);
  ExpectPlanes(*Compute(Image(DRM_FORMAT_NV16, 101, 51), 0),
               {{0, 102, 5202}, {5202, 102, 5202}}, 10404);
  ExpectPlanes(*Compute(Image(DRM_FORMAT_NV24, 101, 51), 0),
               {{0, 101, 5151}, {5151, 202, 10302}}, 15453);
  ExpectPlanes(*Compute(Image(DRM_FORMAT_YUYV, 101, 51), 0),
               {{0, 204, 10404}}, 10404);
  ExpectPlanes(*Compute(Image(DRM_FORMAT_NV12, 1, 1), 0),
               {{0, 2, 2}, {2, 2, 2}}, 4);
}

TEST(Golden, UsageAlignment) {
  // ARGB8888 100x100: 400-byte rows padded to 448 for GPU and display.
  for (uint64_t u : {usage::kGpuTexture, usage::kGpuRenderTarget,
                     usage::kComposerOverlay, usage::kComposerCursor}) {
    SCOPED_TRACE(usage::ToString(u));
    ExpectPlanes(*Compute(Image(DRM_FORMAT_ARGB8888, 100, 100), u),
                 {{0, 448, 44800}}, 44800);
  }
  ExpectPlanes(*Compute(Image(DRM_FORMAT_ARGB8888, 1920, 1080),
                        usage::kGpuTexture | usage::kGpuRenderTarget),
               {{0, 7680, 8294400}}, 8294400);
  // NV12 1080p for a decoder: 1088 rows (64), chroma page aligned.
  BufferLayout dec = *Compute(Image(DRM_FORMAT_NV12, 1920, 1080),
                              usage::kVideoDecoder);
  ExpectPlanes(dec, {{0, 1920, 2088960}, {2088960, 1920, 1044480}}, 3133440);
  EXPECT_EQ(dec.planes(0).height_in_samples(), 1080u);  // the image, not pad
  // NV12 100x30 for an encoder: stride 128, 32 rows, chroma at 4096.
  ExpectPlanes(*Compute(Image(DRM_FORMAT_NV12, 100, 30), usage::kVideoEncoder),
               {{0, 128, 4096}, {4096, 128, 2048}}, 8192);
  // YUV420 for the GPU: chroma strides stay multiples of 64 too.
  ExpectPlanes(*Compute(Image(DRM_FORMAT_YUV420, 100, 2), usage::kGpuTexture),
               {{0, 128, 256}, {256, 64, 64}, {320, 64, 64}}, 384);
}

TEST(Alignment, TableIsPowersOfTwoAndMerges) {
  for (const UsageAlignment& row : AlignmentTable()) {
    SCOPED_TRACE(row.why);
    for (uint32_t v : {row.alignment.stride, row.alignment.height,
                       row.alignment.plane}) {
      EXPECT_TRUE(v != 0 && (v & (v - 1)) == 0) << v;
    }
    EXPECT_EQ(row.usage_bits & usage::kReservedMask, 0u);
  }
  Alignment none = AlignmentFor(usage::kCpuReadOften | usage::kCameraOutput |
                                usage::kProtected);
  EXPECT_EQ(none.stride, 1u);
  EXPECT_EQ(none.height, 1u);
  EXPECT_EQ(none.plane, 1u);
  Alignment both = AlignmentFor(usage::kGpuTexture | usage::kVideoDecoder);
  EXPECT_EQ(both.stride, 64u);
  EXPECT_EQ(both.height, 64u);
  EXPECT_EQ(both.plane, 4096u);
}

// ---- Layers ----

TEST(Layers, StackWholeLayers) {
  BufferLayout l = *Compute(Image(DRM_FORMAT_NV12, 64, 64, 3), 0);
  EXPECT_EQ(l.layer_count(), 3u);
  EXPECT_EQ(l.layer_stride(), 6144u);
  EXPECT_EQ(l.size(), 18432u);
  ExpectPlanes(l, {{0, 64, 4096}, {4096, 64, 2048}}, 18432);
  // The layer stride carries the plane alignment: 100x30 NV12 for an
  // encoder needs 8192 per layer.
  BufferLayout e = *Compute(Image(DRM_FORMAT_NV12, 100, 30, 2),
                            usage::kVideoEncoder);
  EXPECT_EQ(e.layer_stride(), 8192u);
  EXPECT_EQ(e.size(), 16384u);
  // 0 means 1.
  EXPECT_EQ(Compute(Image(DRM_FORMAT_R8, 5, 5, 0), 0)->layer_count(), 1u);
  // Odd-sized layers with no alignment are not padded.
  EXPECT_EQ(Compute(Image(DRM_FORMAT_RGB888, 3, 3, 4), 0)->size(), 108u);
}

// ---- Refusals ----

void ExpectInvalid(const absl::StatusOr<BufferLayout>& l,
                   const std::string& words) {
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument)
      << l.status();
  EXPECT_THAT(std::string(l.status().message()), HasSubstr(words));
}

TEST(Refuse, ZeroAndTooLargeDimensions) {
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 0, 1080), 0), "non-zero");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 1920, 0), 0), "non-zero");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 16385, 16), 0), "at most 16384");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 16, 16385), 0), "at most 16384");
  ExpectInvalid(Compute(Image(DRM_FORMAT_R8, 16, 16, 2049), 0), "at most 2048");
  EXPECT_TRUE(Compute(Image(DRM_FORMAT_R8, 16384, 16384, 1), 0).ok());
  EXPECT_TRUE(Compute(Image(DRM_FORMAT_R8, 16, 16, 2048), 0).ok());
}

TEST(Refuse, MaxSize) {
  // 16384^2 * 8 bytes = 2 GiB; two layers are exactly 4 GiB (allowed).
  absl::StatusOr<BufferLayout> two =
      Compute(Image(DRM_FORMAT_ABGR16161616F, 16384, 16384, 2), 0);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->size(), uint64_t{4} << 30);
  ExpectInvalid(Compute(Image(DRM_FORMAT_ABGR16161616F, 16384, 16384, 3), 0),
                "more than the maximum");
  ExpectInvalid(Compute(Image(DRM_FORMAT_ARGB8888, 16384, 16384, 2048), 0),
                "more than the maximum");
}

TEST(Refuse, OverflowNeverWraps) {
  Options relaxed;
  relaxed.limits = {UINT32_MAX, UINT32_MAX, UINT64_MAX};
  // 2^31 x 2^31 x 8 bytes = 2^65: a wrapping multiply would give 0.
  ExpectInvalid(Compute(Image(DRM_FORMAT_ABGR16161616F, 1u << 31, 1u << 31),
                        0, relaxed),
                "overflows");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, UINT32_MAX, UINT32_MAX,
                              UINT32_MAX),
                        usage::kVideoDecoder, relaxed),
                "overflows");
  // One layer fits in 64 bits, two do not.
  ExpectInvalid(Compute(Image(DRM_FORMAT_R8, UINT32_MAX, UINT32_MAX, 2), 0,
                        relaxed),
                "overflows");
  // Padding the height to 64 rows overflows the plane size.
  ExpectInvalid(Compute(Image(DRM_FORMAT_ABGR16161616F, UINT32_MAX,
                              UINT32_MAX),
                        usage::kVideoDecoder, relaxed),
                "overflows");
  // Just below: fits, and is exact.
  absl::StatusOr<BufferLayout> big =
      Compute(Image(DRM_FORMAT_R8, UINT32_MAX, UINT32_MAX, 1), 0, relaxed);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->size(), uint64_t{UINT32_MAX} * UINT32_MAX);
}

TEST(Refuse, ReservedUsage) {
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 64, 64), 1u << 10),
                "reserved bits 0x400");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 64, 64), uint64_t{1} << 40),
                "reserved");
  ExpectInvalid(Compute(Image(DRM_FORMAT_NV12, 64, 64), 0x1), "CPU read");
  EXPECT_TRUE(Compute(Image(DRM_FORMAT_NV12, 64, 64),
                      usage::kVendorMask | usage::kVendorMaskHi)
                  .ok());
}

// Unknown formats are INVALID_ARGUMENT (a bad descriptor), like the blob
// format 0 when an image is asked for.
TEST(Refuse, UnknownFormat) {
  ExpectInvalid(Compute(Image(DRM_FORMAT_XRGB4444, 64, 64), 0),
                "format 0x32315258 is not supported");
  ExpectInvalid(Compute(Image(0x12345678, 64, 64), 0), "not supported");
  ExpectInvalid(Compute(Image(format::kBlob, 64, 64), 0), "BLOB");
}

TEST(Refuse, NonLinearModifier) {
  ExpectInvalid(Compute(Image(DRM_FORMAT_XRGB8888, 64, 64, 1,
                              I915_FORMAT_MOD_X_TILED),
                        0),
                "modifier INTEL_X_TILED (0x0100000000000001) not supported by "
                "any backend");
  ExpectInvalid(Compute(Image(DRM_FORMAT_XRGB8888, 64, 64, 1, 0x1234), 0),
                "modifier 0x0000000000001234 not supported");
  // "None given" is linear.
  BufferLayout none = *Compute(
      Image(DRM_FORMAT_XRGB8888, 64, 64, 1, DRM_FORMAT_MOD_INVALID), 0);
  EXPECT_EQ(none.modifier(), DRM_FORMAT_MOD_LINEAR);
}

TEST(Modifier, BackendDeclaredTiling) {
  // X tiling: 512-byte x 8-row tiles, 4 KiB each.
  const ModifierRule rules[] = {{I915_FORMAT_MOD_X_TILED, {512, 8, 4096}}};
  Options opts;
  opts.modifiers = rules;
  BufferLayout l = *Compute(
      Image(DRM_FORMAT_XRGB8888, 100, 10, 1, I915_FORMAT_MOD_X_TILED), 0, opts);
  EXPECT_EQ(l.modifier(), I915_FORMAT_MOD_X_TILED);
  ExpectPlanes(l, {{0, 512, 8192}}, 8192);
  // Each plane's rows are whole tile rows: NV12 1920x1080's chroma is 540
  // rows, 68 tiles' worth (544) once tiled, not 67.5 (it ended inside a
  // tile row, 8 KiB short of what a tiled access reaches).
  BufferLayout nv12 =
      *Compute(Image(DRM_FORMAT_NV12, 1920, 1080, 1, I915_FORMAT_MOD_X_TILED), 0, opts);
  ASSERT_EQ(nv12.planes_size(), 2);
  EXPECT_EQ(nv12.planes(0).size(), uint64_t{2048} * 1080);  // 135 tile rows
  EXPECT_EQ(nv12.planes(1).size(), uint64_t{2048} * 544);
  EXPECT_EQ(nv12.planes(1).size() / nv12.planes(1).stride() % 8, 0u);
  // Android's YV12 formula has no room for tiles: refused.
  EXPECT_EQ(Compute(Image(DRM_FORMAT_YVU420, 1920, 1080, 1, I915_FORMAT_MOD_X_TILED), 0, opts)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Still refused without the rule, and other modifiers still refused.
  EXPECT_FALSE(Compute(Image(DRM_FORMAT_XRGB8888, 100, 10, 1,
                             I915_FORMAT_MOD_Y_TILED),
                       0, opts)
                   .ok());
}

// ---- Blob, Describe, determinism ----

TEST(Blob, ComputeBlob) {
  BufferLayout b = *ComputeBlob(12345, usage::kSensorDirectData);
  EXPECT_EQ(b.size(), 12345u);
  EXPECT_EQ(b.format(), 0u);
  EXPECT_EQ(b.planes_size(), 0);
  EXPECT_EQ(ComputeBlob(0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeBlob((uint64_t{4} << 30) + 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeBlob(10, 1u << 13).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Describe(b), "BLOB, size 12345 bytes\n");
}

TEST(Describe, Nv12) {
  std::string d = Describe(*Compute(Image(DRM_FORMAT_NV12, 1920, 1080), 0));
  EXPECT_THAT(d, HasSubstr("NV12 (0x3231564e) 1920x1080, 1 layer, modifier LINEAR"));
  EXPECT_THAT(d, HasSubstr("size 3110400 bytes"));
  EXPECT_THAT(d, HasSubstr("plane 0: offset 0, stride 1920, size 2073600"));
  EXPECT_THAT(d, HasSubstr("plane 1: offset 2073600, stride 1920, size 1036800; "
                           "960x540 samples, subsampling 2x2, 16 bits/sample: "
                           "CB[0:8] CR[8:8]"));
}

TEST(Compute, IsDeterministic) {
  for (const format::FormatInfo& f : format::All()) {
    SCOPED_TRACE(f.name);
    ImageDescriptor d = Image(f.fourcc, f.android_yv12 ? 334 : 333, f.android_yv12 ? 78 : 77, 2);
    uint64_t u = usage::kGpuTexture | usage::kCameraOutput;
    absl::StatusOr<BufferLayout> a = Compute(d, u), b = Compute(d, u);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status();
    EXPECT_EQ(a->SerializeAsString(), b->SerializeAsString());
  }
}

}  // namespace
}  // namespace halloc::layout
