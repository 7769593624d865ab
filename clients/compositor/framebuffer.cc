// Framebuffers: halloc frames imported with PRIME, and dumb buffers.
#include <drm.h>
#include <drm_fourcc.h>
#include <sys/mman.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "clients/compositor/drm_device.h"
#include "clients/compositor/kms.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc::compositor {

std::string FourccName(uint32_t fourcc) {
  std::string s(4, ' ');
  for (int i = 0; i < 4; ++i) {
    const char c = char((fourcc >> (8 * i)) & 0xff);
    s[i] = (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return s;
}

Framebuffer::Framebuffer(Framebuffer&& other) noexcept { *this = std::move(other); }

Framebuffer& Framebuffer::operator=(Framebuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    device_ = std::move(other.device_);
    id_ = std::exchange(other.id_, 0);
    width_ = std::exchange(other.width_, 0);
    height_ = std::exchange(other.height_, 0);
    format_ = std::exchange(other.format_, 0);
    buffer_id_ = std::exchange(other.buffer_id_, 0);
    handles_ = std::move(other.handles_);
    other.handles_.clear();
  }
  return *this;
}

Framebuffer::~Framebuffer() { Reset(); }

void Framebuffer::Reset() {
  if (device_ != nullptr) {
    // RMFB of a framebuffer on screen turns its plane off; the GEM objects
    // live until the framebuffer no longer references them.
    if (id_ != 0 && device_->Owned()) drmModeRmFB(device_->fd(), id_);
    for (uint32_t h : handles_) device_->ReleaseHandle(h);
  }
  device_.reset();
  id_ = 0;
  buffer_id_ = 0;
  handles_.clear();
}

absl::Status CheckScanoutLayout(const halloc::Buffer& buffer) {
  const v1::BufferLayout& l = buffer.layout();
  const std::string what = absl::StrCat("buffer ", buffer.id());
  if (l.planes_size() == 0 || l.format() == 0 || l.width() == 0 || l.height() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has no image layout (a blob buffer): KMS needs a format"));
  }
  if (l.planes_size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", l.planes_size(), " planes; KMS takes at most 4"));
  }
  auto too_small = [&](uint64_t end) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is ", buffer.size(), " bytes, smaller than its layout (", end, " bytes)"));
  };
  if (l.size() > buffer.size()) return too_small(l.size());
  for (const v1::PlaneLayout& p : l.planes()) {
    if (p.offset() > UINT32_MAX || p.stride() == 0 || p.stride() > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": plane offset ", p.offset(), " or stride ", p.stride(), " does not fit KMS"));
    }
    // Compared without adding: a plane size near 2^64 would wrap the sum.
    if (p.offset() > buffer.size() || p.size() > buffer.size() - p.offset()) {
      return too_small(p.size() > UINT64_MAX - p.offset() ? UINT64_MAX : p.offset() + p.size());
    }
  }
  if (!buffer.is_dmabuf()) {
    return absl::FailedPreconditionError(absl::StrCat(what, " is not a dma-buf (backend ",
                                                      buffer.info().backend(),
                                                      "): KMS imports dma-bufs only"));
  }
  return absl::OkStatus();
}

DumbFramebuffer::DumbFramebuffer(DumbFramebuffer&& o) noexcept { *this = std::move(o); }

DumbFramebuffer& DumbFramebuffer::operator=(DumbFramebuffer&& o) noexcept {
  if (this != &o) {
    if (data != nullptr) ::munmap(data, size);
    fb = std::move(o.fb);
    data = std::exchange(o.data, nullptr);
    size = std::exchange(o.size, 0);
    stride = o.stride;
  }
  return *this;
}

DumbFramebuffer::~DumbFramebuffer() {
  if (data != nullptr) ::munmap(data, size);
}

}  // namespace halloc::compositor
