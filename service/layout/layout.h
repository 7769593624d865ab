// Plane layouts: (format, modifier, width, height, layers) + usage →
// per-plane offset/stride/size and the total size. Pure: no I/O, no
// allocation of buffer memory, no logging, so the daemon's IsSupported and
// Allocate share it and cannot disagree.
//
// Rules (see format.h for the formats, alignment.h for the usage table):
//  * Plane 0's stride is the row size (width rounded up to the format's
//    chroma/block granularity, so every chroma row fits), rounded up so that
//    every plane's stride is a multiple of the usage's stride alignment and
//    plane 0's a whole number of its blocks (pixels).
//  * Other planes keep the fixed ratio to plane 0's stride that single-stride
//    consumers expect (NV12/P010: equal; YUV420: half; NV24: double); then
//    each is rounded up to its format minimum (16 for YVU420 = Android YV12).
//  * Rows: height rounded up to the usage's height alignment, divided by the
//    plane's vertical subsampling rounding up (odd heights get a full last
//    chroma row); with a tiled modifier, each plane's rows then rounded up
//    to whole tile rows.
//  * Planes follow each other, each offset rounded up to the plane
//    alignment; the layer stride is the end of the last plane rounded up to
//    the plane alignment; size = layer_stride * layer_count.
//  * YVU420 (Android YV12): the usage's plane alignment is not applied
//    inside a layer, so the Android formula holds exactly; it takes even
//    sizes only, no usage that pads rows (decoder, encoders: the padded
//    luma rows would run into chroma) and no tiled modifier (its strides
//    and offsets are the formula's).
//  * GPU_CUBE_MAP needs a layer count that is a multiple of 6;
//    GPU_MIPMAP_COMPLETE is refused (no mip levels are laid out).
//
// Errors, all INVALID_ARGUMENT (a bad descriptor: retrying will not help):
// reserved usage bits; unknown or blob format; the YV12, cube-map and
// mip-chain rules above; a modifier other than LINEAR
// or DRM_FORMAT_MOD_INVALID ("none given" = LINEAR) that no backend
// declared; width or height 0 or above Limits::max_dimension; layer_count
// above Limits::max_layers; a size above Limits::max_size or one that does
// not fit in 64 bits (all arithmetic is checked; nothing wraps).
#ifndef HALLOC_SERVICE_LAYOUT_LAYOUT_H_
#define HALLOC_SERVICE_LAYOUT_LAYOUT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "halloc/v1/types.pb.h"
#include "service/layout/alignment.h"

namespace halloc::layout {

struct Limits {
  uint32_t max_dimension = 16384;          // per side, pixels
  uint32_t max_layers = 2048;              // layer_count (0 means 1)
  uint64_t max_size = uint64_t{4} << 30;   // bytes, all layers (4 GiB)
};

// A non-linear modifier a backend declares it can place. halloc lays it out
// like LINEAR with this extra alignment (tile width in bytes → stride, tile
// rows → height, tile size → plane), as minigbm does for X/Y tiling. Layouts
// with auxiliary planes (compression) cannot be described this way. Values
// of 0 count as 1.
struct ModifierRule {
  uint64_t modifier;
  Alignment alignment;
};

struct Options {
  Limits limits;
  absl::Span<const ModifierRule> modifiers;  // beyond LINEAR; not owned
};

// The layout of `image` for `usage`, with default Options (LINEAR only).
absl::StatusOr<halloc::v1::BufferLayout> Compute(
    const halloc::v1::ImageDescriptor& image, uint64_t usage);
absl::StatusOr<halloc::v1::BufferLayout> Compute(
    const halloc::v1::ImageDescriptor& image, uint64_t usage,
    const Options& options);

// A blob (size-only) buffer: validates usage and 0 < size <= max_size and
// returns a layout with format 0 (BLOB), no planes, and `size`.
absl::StatusOr<halloc::v1::BufferLayout> ComputeBlob(
    uint64_t size, uint64_t usage, const Limits& limits = Limits());

// "LINEAR", "INVALID", vendor and name from libdrm with the hex value
// ("INTEL_X_TILED (0x0100000000000001)"), or just the hex value.
std::string ModifierName(uint64_t modifier);

// Multi-line, for people (hallocctl): format, size, layers and modifier on
// the first lines, then one line per plane with offset, stride, size,
// samples, subsampling and components.
std::string Describe(const halloc::v1::BufferLayout& layout);

}  // namespace halloc::layout

#endif  // HALLOC_SERVICE_LAYOUT_LAYOUT_H_
