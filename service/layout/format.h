// The pixel formats halloc lays out: DRM fourcc codes from libdrm's
// drm_fourcc.h, each described as data (planes, subsampling, bytes per
// block, components with their bit positions, Android PlaneLayout style).
//
// YV12. Android's HAL_PIXEL_FORMAT_YV12 has the same numeric value as
// DRM_FORMAT_YVU420 ('Y','V','1','2'), so an allocator cannot tell the two
// apart, and an Android client that asks for YV12 computes the chroma planes
// from the luma stride itself. halloc therefore ALWAYS lays YVU420 out with
// the Android rules (system/graphics.h):
//   luma stride   y = a multiple of 16 (>= width),
//   chroma stride c = align(y / 2, 16),
//   Cr plane at y * height, Cb plane right after it (c * height / 2),
//   no height padding and no padding between planes; so even sizes only,
//   and no usage or modifier that pads rows (layout.h).
// The name "YV12" is accepted as an alias of YVU420. Any DRM consumer still
// reads the strides and offsets it is given, so nothing is lost for it; use
// YUV420 (alias "I420"/"YU12") for the tight DRM layout.
//
// BLOB. Size-only buffers have no format: their BufferLayout.format is
// DRM_FORMAT_INVALID (0), which Name() prints as "BLOB" and ParseName()
// accepts as "BLOB". Find(kBlob) is nullptr: blobs are not images.
#ifndef HALLOC_SERVICE_LAYOUT_FORMAT_H_
#define HALLOC_SERVICE_LAYOUT_FORMAT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace halloc::format {

// DRM_FORMAT_INVALID: the "format" of a size-only (blob) buffer.
inline constexpr uint32_t kBlob = 0;

inline constexpr int kMaxPlanes = 3;
inline constexpr int kMaxComponents = 4;

// One component of a sample, Android PlaneLayoutComponent style: bit
// positions inside the little-endian sample (e.g. P010's Y is 10 bits at
// offset 6 of a 16-bit sample).
struct Component {
  const char* type;  // "Y", "CB", "CR", "R", "G", "B", "A"
  uint8_t offset_bits;
  uint8_t size_bits;
};

// One memory plane. A row holds ceil(ceil(width / h_sub) / block_width)
// blocks of block_bytes each; the plane has ceil(height / v_sub) rows.
// block_width is 1 except for packed 4:2:2 (YUYV etc.: 2 pixels per 4 bytes).
struct PlaneInfo {
  uint8_t h_sub;
  uint8_t v_sub;
  uint8_t block_width;
  uint8_t block_bytes;
  // Android sampleIncrementInBits: bits from one sample to the next.
  uint8_t sample_increment_bits;
  // Each plane stride must be a multiple of this (16 for Android YV12).
  uint8_t min_stride_alignment;
  uint8_t num_components;
  Component components[kMaxComponents];
};

struct FormatInfo {
  uint32_t fourcc;  // DRM_FORMAT_*
  const char* name;  // canonical name without DRM_FORMAT_, e.g. "NV12"
  bool is_yuv;
  // Android fixed layout (YV12): chroma strides follow the formula in the
  // comment at the top of this file and the usage's height and plane
  // alignment do not apply inside a layer (see layout.h).
  bool android_yv12;
  uint8_t num_planes;
  PlaneInfo planes[kMaxPlanes];
};

// The table entry for `fourcc`, or nullptr if halloc does not know it
// (including kBlob).
const FormatInfo* Find(uint32_t fourcc);

// "NV12", "argb8888", "YV12" (alias of YVU420), "I420"/"YU12" (YUV420),
// the four-character code of a known format ("AR24", "XR24"), "BLOB" (0),
// or a number "0x3231564e" (any value: Compute() decides if it is known).
// Case-insensitive. Unknown → INVALID_ARGUMENT.
absl::StatusOr<uint32_t> ParseName(absl::string_view name);

// Canonical name; "BLOB" for 0; "0x%08x" for unknown codes (which
// ParseName reads back).
std::string Name(uint32_t fourcc);

// The whole table, in a stable order (RGB first, then YUV).
absl::Span<const FormatInfo> All();

}  // namespace halloc::format

#endif  // HALLOC_SERVICE_LAYOUT_FORMAT_H_
