// Usage → alignment: the data table that decides how much padding a buffer
// gets. Each row names the usage bits it applies to; a buffer gets, per
// field, the largest value of every row whose bits it asks for. Usages in no
// row (CPU access, camera, protected, sensor, renderscript) add nothing, so
// a camera/CPU buffer is laid out tight (NV12 1920x1080: stride 1920, UV at
// 2073600, 3110400 bytes).
//
// The values are what a minigbm/gralloc user would expect on common
// hardware (all powers of two):
//   GPU texture/render target/data/cube map/mipmaps   stride 64, plane 64
//     (linear sampler and render-target pitch on i915, Mali, Adreno, virgl)
//   composer overlay/client target/cursor, front buffer stride 64, plane 64
//     (display engine scan-out pitch)
//   video encoder      stride 64, height 16 (macroblocks), plane 4096
//   video decoder      stride 64, height 64 (HEVC CTB / VP9, AV1 superblock),
//                      plane 4096 (Venus-style page-aligned chroma)
//   HW image encoder   stride 16, height 16 (JPEG 4:2:0 MCUs)
#ifndef HALLOC_SERVICE_LAYOUT_ALIGNMENT_H_
#define HALLOC_SERVICE_LAYOUT_ALIGNMENT_H_

#include <cstdint>

#include "absl/types/span.h"

namespace halloc::layout {

// Byte and row multiples; 1 means "no constraint".
struct Alignment {
  uint32_t stride = 1;  // every plane's stride, in bytes
  uint32_t height = 1;  // rows of the image (before chroma subsampling)
  uint32_t plane = 1;   // every plane offset and the layer stride, in bytes
};

struct UsageAlignment {
  uint64_t usage_bits;  // the row applies if usage & usage_bits != 0
  Alignment alignment;
  const char* why;
};

// The table described above.
absl::Span<const UsageAlignment> AlignmentTable();

// Field-wise maximum over the rows that apply to `usage` ({1,1,1} if none).
Alignment AlignmentFor(uint64_t usage);

}  // namespace halloc::layout

#endif  // HALLOC_SERVICE_LAYOUT_ALIGNMENT_H_
