#include "clients/camera/camera.h"

#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/camera/formats.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/layout/format.h"

namespace halloc::camera {

absl::StatusOr<std::unique_ptr<Camera>> Camera::Open(
    Client& client, const CameraOptions& options) {
  if (options.device.empty()) return OpenSynthetic(client, options);
  return OpenV4l2(client, options);
}

Camera::~Camera() {
  std::vector<uint64_t> ids;
  for (const Buffer& b : buffers_) ids.push_back(b.id());
  // The session's end releases them too; nothing to do on failure.
  if (!ids.empty()) client_->Release(ids).IgnoreError();
}

absl::StatusOr<v1::Grant> Camera::ShareWithClient(const Frame& frame,
                                                  absl::string_view peer_name,
                                                  v1::CpuAccess cpu) {
  if (frame.index >= buffers_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame index ", frame.index, " is not one of this camera's ",
                     buffers_.size(), " buffers"));
  }
  return client_->ShareWithClient(buffers_[frame.index].id(), peer_name, cpu);
}

absl::StatusOr<v1::Grant> Camera::ShareWithUid(const Frame& frame,
                                               uid_t peer_uid,
                                               v1::CpuAccess cpu) {
  if (frame.index >= buffers_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame index ", frame.index, " is not one of this camera's ",
                     buffers_.size(), " buffers"));
  }
  return client_->Share(buffers_[frame.index].id(), peer_uid, cpu);
}

absl::Status Camera::AllocateBuffers(const v1::BufferDescriptor& desc,
                                     uint32_t count) {
  ASSIGN_OR_RETURN(std::vector<Buffer> buffers, client_->Allocate(desc, count));
  buffers_ = std::move(buffers);  // released by ~Camera if refused below
  // Every buffer is written by one layout (the driver's, or the pattern's):
  // each must have it, whole.
  for (size_t i = 0; i < buffers_.size(); ++i) {
    const Buffer& b = buffers_[i];
    RETURN_IF_ERROR(CheckFrameLayout(b.layout(), desc, b.size()));
    if (!google::protobuf::util::MessageDifferencer::Equals(b.layout(), buffers_[0].layout())) {
      return absl::DataLossError(
          absl::StrCat("hallocd laid buffer ", i, " of ", buffers_.size(), " out unlike buffer 0"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckFrameLayout(const v1::BufferLayout& layout, const v1::BufferDescriptor& desc,
                              uint64_t buffer_size) {
  const v1::ImageDescriptor& want = desc.image();
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrFormat("hallocd's layout for a %ux%u %s frame %s",
                                               want.width(), want.height(),
                                               FourccString(want.format()), why));
  };
  if (layout.planes_size() == 0) return bad("has no plane");
  if (layout.format() != want.format() || layout.width() != want.width() ||
      layout.height() != want.height()) {
    return bad(absl::StrFormat("is for a %ux%u %s", layout.width(), layout.height(),
                               FourccString(layout.format())));
  }
  if (layout.size() > buffer_size) {
    return bad(absl::StrCat("needs ", layout.size(), " bytes; the buffer has ", buffer_size));
  }
  for (int i = 0; i < layout.planes_size(); ++i) {
    const v1::PlaneLayout& p = layout.planes(i);
    if (p.stride() == 0 || p.offset() > layout.size() || p.size() > layout.size() - p.offset()) {
      return bad(absl::StrCat("has plane ", i, " (offset ", p.offset(), ", ", p.size(),
                              " bytes, stride ", p.stride(), ") outside its ", layout.size(),
                              " bytes"));
    }
  }
  return absl::OkStatus();
}

namespace {

// The DRM format table's row for what `driver` negotiated; nullptr for a
// format not in the camera's table.
const format::FormatInfo* FormatOf(const StreamFormat& driver) {
  absl::StatusOr<uint32_t> drm = DrmFromV4l2(driver.v4l2_format);
  return drm.ok() ? format::Find(*drm) : nullptr;
}

}  // namespace

absl::Status ReconcileWithDriver(const StreamFormat& driver, const v1::BufferLayout& layout,
                                 absl::string_view device) {
  const std::string what = absl::StrFormat("%s %ux%u on %s", FourccString(driver.v4l2_format),
                                           driver.width, driver.height, device);
  // The DRM format's planes, all in the driver's one memory plane.
  const format::FormatInfo* info = FormatOf(driver);
  if (info == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": not a camera format"));
  }
  if (layout.planes_size() != info->num_planes) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: the driver writes %d plane(s), hallocd's layout has %d", what,
                        info->num_planes, layout.planes_size()));
  }
  if (info->num_planes > 2) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": a format of more than two planes in one memory plane"));
  }
  for (const v1::PlaneLayout& plane : layout.planes()) {
    if (plane.stride() != driver.bytesperline) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: the driver's bytesperline %u differs from hallocd's stride %u", what,
                          driver.bytesperline, plane.stride()));
    }
  }
  // One memory plane: the frame from byte 0, the chroma plane right after
  // the luma rows.
  const uint64_t expected[] = {0, uint64_t{driver.bytesperline} * driver.height};
  for (int i = 0; i < layout.planes_size(); ++i) {
    if (layout.planes(i).offset() != expected[i]) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: the driver puts plane %d at byte %u, hallocd at %u", what, i,
                          expected[i], layout.planes(i).offset()));
    }
  }
  if (driver.sizeimage > layout.size()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: the driver's sizeimage %u is larger than hallocd's %u bytes", what,
                        driver.sizeimage, layout.size()));
  }
  return absl::OkStatus();
}

uint32_t V4l2Length(uint64_t size) {
  return static_cast<uint32_t>(std::min<uint64_t>(size, std::numeric_limits<uint32_t>::max()));
}

uint64_t FrameBytes(const StreamFormat& driver) {
  const format::FormatInfo* info = FormatOf(driver);
  if (info == nullptr) return 0;
  uint64_t bytes = 0;
  for (int i = 0; i < info->num_planes; ++i) {
    const uint64_t v_sub = std::max<uint64_t>(info->planes[i].v_sub, 1);
    bytes += uint64_t{driver.bytesperline} * ((uint64_t{driver.height} + v_sub - 1) / v_sub);
  }
  return bytes;
}

absl::Status CheckOptions(const CameraOptions& options) {
  if (options.width == 0 || options.height == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "frame size %ux%u: width and height must be non-zero", options.width,
        options.height));
  }
  if (options.buffer_count == 0 || options.buffer_count > kMaxBuffers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u buffers: a camera takes 1 to %u", options.buffer_count, kMaxBuffers));
  }
  // NaN fails the range too.
  if (options.fps != 0 && !(options.fps >= kMinFps && options.fps <= kMaxFps)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%g frames/s: a camera runs at 0 (as fast as it can) or %g to %g",
                        options.fps, kMinFps, kMaxFps));
  }
  return absl::OkStatus();
}

v1::BufferDescriptor FrameDescriptor(const CameraOptions& options,
                                     uint32_t width, uint32_t height,
                                     uint64_t extra_usage) {
  v1::BufferDescriptor desc = ImageDescriptor(
      width, height, options.format,
      usage::kCameraOutput | options.usage | extra_usage, options.name);
  return desc;
}

}  // namespace halloc::camera
