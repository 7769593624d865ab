#include "clients/compositor/pattern.h"

#include <drm_fourcc.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::compositor {
namespace {

template <typename PixelFn>
absl::Status Fill(const halloc::Buffer& frame, PixelFn pixel) {
  const v1::BufferLayout& l = frame.layout();
  if (l.format() != DRM_FORMAT_XRGB8888 || l.planes_size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer ", frame.id(), " is not an XRGB8888 image"));
  }
  ASSIGN_OR_RETURN(Mapping map, frame.Map(Access::kReadWrite));
  const v1::PlaneLayout& p = l.planes(0);
  // Each row is 4 * width bytes at offset + y * stride: the stride must
  // hold a row, and the last row end inside the mapping (no product may
  // wrap: the layout is the daemon's word).
  const uint64_t row = uint64_t{4} * l.width();
  const uint64_t size = map.size();
  if (l.height() > 0 &&
      (p.stride() == 0 || p.stride() < row || p.offset() > size || row > size - p.offset() ||
       (size - p.offset() - row) / p.stride() < l.height() - 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer ", frame.id(), " (", size, " bytes) does not hold ", l.height(),
                     " rows of ", row, " bytes at offset ", p.offset(), ", stride ", p.stride()));
  }
  for (uint32_t y = 0; y < l.height(); ++y) {
    auto* row = reinterpret_cast<uint32_t*>(map.as<uint8_t>() + p.offset() + y * p.stride());
    for (uint32_t x = 0; x < l.width(); ++x) row[x] = pixel(x, l.width());
  }
  return absl::OkStatus();  // the Mapping's end of CPU access flushes
}

}  // namespace

absl::Status FillBars(const halloc::Buffer& frame) {
  return Fill(frame, [](uint32_t x, uint32_t w) { return BarAt(x, w); });
}

absl::Status FillSolid(const halloc::Buffer& frame, uint32_t colour) {
  return Fill(frame, [colour](uint32_t, uint32_t) { return colour; });
}

}  // namespace halloc::compositor
