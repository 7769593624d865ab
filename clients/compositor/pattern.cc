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
  // Each row is 4 * width bytes, all of them inside the mapping.
  absl::StatusOr<uint8_t*> rows =
      map.Rows(p.offset(), p.stride(), uint64_t{4} * l.width(), l.height());
  if (!rows.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer ", frame.id(), ": ", rows.status().message()));
  }
  for (uint32_t y = 0; y < l.height(); ++y) {
    uint8_t* row = *rows + uint64_t{y} * p.stride();
    for (uint32_t x = 0; x < l.width(); ++x) {
      const uint32_t value = pixel(x, l.width());
      std::memcpy(row + uint64_t{4} * x, &value, sizeof(value));  // rows need not be aligned
    }
  }
  return map.Unmap();  // the end of CPU access flushes (and says if the view was revoked)
}

}  // namespace

absl::Status FillBars(const halloc::Buffer& frame) {
  return Fill(frame, [](uint32_t x, uint32_t w) { return BarAt(x, w); });
}

absl::Status FillSolid(const halloc::Buffer& frame, uint32_t colour) {
  return Fill(frame, [colour](uint32_t, uint32_t) { return colour; });
}

}  // namespace halloc::compositor
