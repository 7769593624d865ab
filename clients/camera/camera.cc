#include "clients/camera/camera.h"

#include <google/protobuf/util/message_differencer.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/camera/formats.h"
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
