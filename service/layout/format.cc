#include "service/layout/format.h"

#include <drm_fourcc.h>

#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace halloc::format {
namespace {

// A plane: subsampling, pixels and bytes per block, sample increment, the
// minimum stride alignment, and up to four components.
constexpr PlaneInfo P(uint8_t h_sub, uint8_t v_sub, uint8_t block_width,
                      uint8_t block_bytes, uint8_t increment_bits,
                      uint8_t min_stride_alignment, Component c0,
                      Component c1 = {}, Component c2 = {}, Component c3 = {}) {
  PlaneInfo p{h_sub,          v_sub, block_width, block_bytes, increment_bits,
              min_stride_alignment, 0, {c0, c1, c2, c3}};
  for (const Component& c : p.components) {
    if (c.type != nullptr) ++p.num_components;
  }
  return p;
}

// A full-resolution plane of `bytes`-byte pixels.
constexpr PlaneInfo Px(uint8_t bytes, Component c0, Component c1 = {},
                       Component c2 = {}, Component c3 = {}) {
  return P(1, 1, 1, bytes, static_cast<uint8_t>(bytes * 8), 1, c0, c1, c2, c3);
}

constexpr FormatInfo Rgb(uint32_t fourcc, const char* name, PlaneInfo p) {
  return {fourcc, name, false, false, 1, {p}};
}
constexpr FormatInfo Yuv1(uint32_t fourcc, const char* name, PlaneInfo p) {
  return {fourcc, name, true, false, 1, {p}};
}
constexpr FormatInfo Yuv2(uint32_t fourcc, const char* name, PlaneInfo y,
                          PlaneInfo c) {
  return {fourcc, name, true, false, 2, {y, c}};
}
constexpr FormatInfo Yuv3(uint32_t fourcc, const char* name, bool yv12,
                          PlaneInfo y, PlaneInfo c1, PlaneInfo c2) {
  return {fourcc, name, true, yv12, 3, {y, c1, c2}};
}

// Bit positions follow drm_fourcc.h's little-endian [msb:0] descriptions.
constexpr Component R8o(uint8_t off) { return {"R", off, 8}; }
constexpr Component G8o(uint8_t off) { return {"G", off, 8}; }
constexpr Component B8o(uint8_t off) { return {"B", off, 8}; }
constexpr Component A8o(uint8_t off) { return {"A", off, 8}; }
constexpr Component Y8o(uint8_t off) { return {"Y", off, 8}; }
constexpr Component Cb8o(uint8_t off) { return {"CB", off, 8}; }
constexpr Component Cr8o(uint8_t off) { return {"CR", off, 8}; }

constexpr PlaneInfo kLuma8 = Px(1, Y8o(0));
constexpr PlaneInfo kCb420 = P(2, 2, 1, 1, 8, 1, Cb8o(0));
constexpr PlaneInfo kCr420 = P(2, 2, 1, 1, 8, 1, Cr8o(0));
constexpr PlaneInfo kYv12Luma = P(1, 1, 1, 1, 8, 16, Y8o(0));
constexpr PlaneInfo kYv12Cb = P(2, 2, 1, 1, 8, 16, Cb8o(0));
constexpr PlaneInfo kYv12Cr = P(2, 2, 1, 1, 8, 16, Cr8o(0));
// Interleaved chroma pair of a semi-planar format.
constexpr PlaneInfo CbCr(uint8_t h_sub, uint8_t v_sub) {
  return P(h_sub, v_sub, 1, 2, 16, 1, Cb8o(0), Cr8o(8));
}
constexpr PlaneInfo CrCb(uint8_t h_sub, uint8_t v_sub) {
  return P(h_sub, v_sub, 1, 2, 16, 1, Cr8o(0), Cb8o(8));
}
// Packed 4:2:2: two pixels per 4-byte block; the increment is per Y sample.
constexpr PlaneInfo Packed422(Component a, Component b, Component c) {
  return P(1, 1, 2, 4, 16, 1, a, b, c);
}

constexpr FormatInfo kFormats[] = {
    Rgb(DRM_FORMAT_ARGB8888, "ARGB8888", Px(4, B8o(0), G8o(8), R8o(16), A8o(24))),
    Rgb(DRM_FORMAT_XRGB8888, "XRGB8888", Px(4, B8o(0), G8o(8), R8o(16))),
    Rgb(DRM_FORMAT_ABGR8888, "ABGR8888", Px(4, R8o(0), G8o(8), B8o(16), A8o(24))),
    Rgb(DRM_FORMAT_XBGR8888, "XBGR8888", Px(4, R8o(0), G8o(8), B8o(16))),
    Rgb(DRM_FORMAT_RGBA8888, "RGBA8888", Px(4, A8o(0), B8o(8), G8o(16), R8o(24))),
    Rgb(DRM_FORMAT_BGRA8888, "BGRA8888", Px(4, A8o(0), R8o(8), G8o(16), B8o(24))),
    Rgb(DRM_FORMAT_RGB888, "RGB888", Px(3, B8o(0), G8o(8), R8o(16))),
    Rgb(DRM_FORMAT_BGR888, "BGR888", Px(3, R8o(0), G8o(8), B8o(16))),
    Rgb(DRM_FORMAT_RGB565, "RGB565", Px(2, {"B", 0, 5}, {"G", 5, 6}, {"R", 11, 5})),
    Rgb(DRM_FORMAT_BGR565, "BGR565", Px(2, {"R", 0, 5}, {"G", 5, 6}, {"B", 11, 5})),
    Rgb(DRM_FORMAT_ARGB2101010, "ARGB2101010",
        Px(4, {"B", 0, 10}, {"G", 10, 10}, {"R", 20, 10}, {"A", 30, 2})),
    Rgb(DRM_FORMAT_ABGR2101010, "ABGR2101010",
        Px(4, {"R", 0, 10}, {"G", 10, 10}, {"B", 20, 10}, {"A", 30, 2})),
    Rgb(DRM_FORMAT_XRGB2101010, "XRGB2101010",
        Px(4, {"B", 0, 10}, {"G", 10, 10}, {"R", 20, 10})),
    Rgb(DRM_FORMAT_ABGR16161616F, "ABGR16161616F",
        Px(8, {"R", 0, 16}, {"G", 16, 16}, {"B", 32, 16}, {"A", 48, 16})),
    Rgb(DRM_FORMAT_R8, "R8", Px(1, R8o(0))),
    Rgb(DRM_FORMAT_R16, "R16", Px(2, {"R", 0, 16})),
    Rgb(DRM_FORMAT_GR88, "GR88", Px(2, R8o(0), G8o(8))),
    Rgb(DRM_FORMAT_RG88, "RG88", Px(2, G8o(0), R8o(8))),
    Yuv2(DRM_FORMAT_NV12, "NV12", kLuma8, CbCr(2, 2)),
    Yuv2(DRM_FORMAT_NV21, "NV21", kLuma8, CrCb(2, 2)),
    Yuv2(DRM_FORMAT_NV16, "NV16", kLuma8, CbCr(2, 1)),
    Yuv2(DRM_FORMAT_NV61, "NV61", kLuma8, CrCb(2, 1)),
    Yuv2(DRM_FORMAT_NV24, "NV24", kLuma8, CbCr(1, 1)),
    Yuv2(DRM_FORMAT_P010, "P010", Px(2, {"Y", 6, 10}),
         P(2, 2, 1, 4, 32, 1, {"CB", 6, 10}, {"CR", 22, 10})),
    Yuv3(DRM_FORMAT_YUV420, "YUV420", false, kLuma8, kCb420, kCr420),
    Yuv3(DRM_FORMAT_YVU420, "YVU420", true, kYv12Luma, kYv12Cr, kYv12Cb),
    Yuv1(DRM_FORMAT_YUYV, "YUYV", Packed422(Y8o(0), Cb8o(8), Cr8o(24))),
    Yuv1(DRM_FORMAT_YVYU, "YVYU", Packed422(Y8o(0), Cr8o(8), Cb8o(24))),
    Yuv1(DRM_FORMAT_UYVY, "UYVY", Packed422(Cb8o(0), Y8o(8), Cr8o(16))),
    Yuv1(DRM_FORMAT_VYUY, "VYUY", Packed422(Cr8o(0), Y8o(8), Cb8o(16))),
    Yuv1(DRM_FORMAT_AYUV, "AYUV", Px(4, Cr8o(0), Cb8o(8), Y8o(16), A8o(24))),
};

struct Alias {
  const char* name;
  uint32_t fourcc;
};
constexpr Alias kAliases[] = {
    {"YV12", DRM_FORMAT_YVU420},
    {"I420", DRM_FORMAT_YUV420},
    {"YU12", DRM_FORMAT_YUV420},
    {"BLOB", kBlob},
};

// The fourcc's four characters without trailing blanks ("R8", "NV12").
std::string FourccChars(uint32_t fourcc) {
  std::string s;
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(fourcc >> (8 * i)));
  return std::string(absl::StripTrailingAsciiWhitespace(s));
}

}  // namespace

const FormatInfo* Find(uint32_t fourcc) {
  for (const FormatInfo& f : kFormats) {
    if (f.fourcc == fourcc) return &f;
  }
  return nullptr;
}

absl::StatusOr<uint32_t> ParseName(absl::string_view name) {
  std::string upper = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(name));
  absl::string_view key = absl::StripPrefix(upper, "DRM_FORMAT_");
  for (const FormatInfo& f : kFormats) {
    if (key == f.name) return f.fourcc;
  }
  for (const Alias& a : kAliases) {
    if (key == a.name) return a.fourcc;
  }
  for (const FormatInfo& f : kFormats) {
    if (key == absl::AsciiStrToUpper(FourccChars(f.fourcc))) return f.fourcc;
  }
  uint32_t value = 0;
  if (absl::StartsWith(key, "0X") && key.size() > 2 &&
      key.find_first_of("+-") == absl::string_view::npos &&
      absl::SimpleHexAtoi(key.substr(2), &value)) {
    return value;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown format \"", name, "\" (try NV12, ARGB8888, YV12 or 0x...)"));
}

std::string Name(uint32_t fourcc) {
  if (const FormatInfo* f = Find(fourcc)) return f->name;
  if (fourcc == kBlob) return "BLOB";
  return absl::StrFormat("0x%08x", fourcc);
}

absl::Span<const FormatInfo> All() { return kFormats; }

}  // namespace halloc::format
