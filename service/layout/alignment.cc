#include "service/layout/alignment.h"

#include <algorithm>
#include <cstdint>

#include "clients/cpp/halloc/base/usage.h"

namespace halloc::layout {
namespace {

constexpr UsageAlignment kTable[] = {
    {usage::kGpuTexture | usage::kGpuRenderTarget | usage::kGpuDataBuffer |
         usage::kGpuCubeMap | usage::kGpuMipmapComplete,
     {64, 1, 64},
     "GPU linear sampler / render target pitch"},
    {usage::kComposerOverlay | usage::kComposerClientTarget |
         usage::kComposerCursor | usage::kFrontBuffer,
     {64, 1, 64},
     "display engine scan-out pitch"},
    {usage::kVideoEncoder, {64, 16, 4096}, "encoder reads whole macroblocks"},
    {usage::kVideoDecoder, {64, 64, 4096},
     "decoder writes whole 64x64 CTBs / superblocks"},
    {usage::kHwImageEncoder, {16, 16, 1}, "JPEG encoder reads 16x16 MCUs"},
};

}  // namespace

absl::Span<const UsageAlignment> AlignmentTable() { return kTable; }

Alignment AlignmentFor(uint64_t usage) {
  Alignment a;
  for (const UsageAlignment& row : kTable) {
    if ((usage & row.usage_bits) == 0) continue;
    a.stride = std::max(a.stride, row.alignment.stride);
    a.height = std::max(a.height, row.alignment.height);
    a.plane = std::max(a.plane, row.alignment.plane);
  }
  return a;
}

}  // namespace halloc::layout
