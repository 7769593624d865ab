#include "clients/camera/formats.h"

#include <drm_fourcc.h>
#include <linux/videodev2.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace halloc::camera {
namespace {

constexpr FormatPair kFormats[] = {
    {DRM_FORMAT_XRGB8888, V4L2_PIX_FMT_XBGR32, "XRGB8888"},
    {DRM_FORMAT_ARGB8888, V4L2_PIX_FMT_ABGR32, "ARGB8888"},
    {DRM_FORMAT_YUYV, V4L2_PIX_FMT_YUYV, "YUYV"},
    {DRM_FORMAT_UYVY, V4L2_PIX_FMT_UYVY, "UYVY"},
    {DRM_FORMAT_NV12, V4L2_PIX_FMT_NV12, "NV12"},
    {DRM_FORMAT_RGB565, V4L2_PIX_FMT_RGB565, "RGB565"},
    {DRM_FORMAT_P010, V4L2_PIX_FMT_P010, "P010"},
};

std::string KnownList() {
  std::string out;
  for (const FormatPair& f : kFormats) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", f.name);
  }
  return out;
}

}  // namespace

absl::Span<const FormatPair> Formats() { return kFormats; }

absl::StatusOr<uint32_t> V4l2FromDrm(uint32_t drm_fourcc) {
  for (const FormatPair& f : kFormats) {
    if (f.drm == drm_fourcc) return f.v4l2;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("format ", FourccString(drm_fourcc),
                   " has no V4L2 capture format; camera formats: ", KnownList()));
}

absl::StatusOr<uint32_t> DrmFromV4l2(uint32_t v4l2_fourcc) {
  for (const FormatPair& f : kFormats) {
    if (f.v4l2 == v4l2_fourcc) return f.drm;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "V4L2 format ", FourccString(v4l2_fourcc), " has no DRM format"));
}

std::string FourccString(uint32_t fourcc) {
  std::string s(4, '?');
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>((fourcc >> (8 * i)) & 0xff);
    if (c >= 0x20 && c < 0x7f) s[i] = c;
  }
  return s;
}

}  // namespace halloc::camera
