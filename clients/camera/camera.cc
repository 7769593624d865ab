#include "clients/camera/camera.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"

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
  buffers_ = std::move(buffers);
  return absl::OkStatus();
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
