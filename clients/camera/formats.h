// The pixel formats a camera can hand to hallocd: each V4L2 pixel format
// paired with the DRM fourcc whose memory layout is the same (data, not an
// if-chain). V4L2 and DRM name packed RGB from opposite ends: V4L2's
// XBGR32 ('XR24', bytes B G R X in memory) is DRM's XRGB8888 ('XR24',
// [31:0] x:R:G:B little-endian), so for these formats the two fourcc values
// are equal; for RGB565 they are not (V4L2 'RGBP' = DRM 'RG16').
#ifndef HALLOC_CLIENTS_CAMERA_FORMATS_H_
#define HALLOC_CLIENTS_CAMERA_FORMATS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace halloc::camera {

struct FormatPair {
  uint32_t drm;   // DRM_FORMAT_*
  uint32_t v4l2;  // V4L2_PIX_FMT_* (single memory plane)
  const char* name;
};

// Every pair, the common case (XRGB8888) first.
absl::Span<const FormatPair> Formats();

// The V4L2 format with `drm_fourcc`'s layout; INVALID_ARGUMENT (listing
// the formats there are) if there is none.
absl::StatusOr<uint32_t> V4l2FromDrm(uint32_t drm_fourcc);
// The DRM format of a V4L2 format; INVALID_ARGUMENT if none.
absl::StatusOr<uint32_t> DrmFromV4l2(uint32_t v4l2_fourcc);

// "XR24", "YUYV", ... (the four characters of a fourcc, '?' for
// unprintable bytes).
std::string FourccString(uint32_t fourcc);

}  // namespace halloc::camera

#endif  // HALLOC_CLIENTS_CAMERA_FORMATS_H_
