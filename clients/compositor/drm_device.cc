// The open DRM node a display and its framebuffers share: its GEM handles,
// counted; and KMS property lookups.
#include "clients/compositor/drm_device.h"

#include <drm.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc::compositor {

absl::StatusOr<ObjectProps> GetProps(int fd, uint32_t object_id, uint32_t type) {
  drmModeObjectProperties* props = drmModeObjectGetProperties(fd, object_id, type);
  if (props == nullptr) {
    return ErrnoStatus(errno, absl::StrCat("properties of KMS object ", object_id));
  }
  ObjectProps out;
  out.object_id = object_id;
  for (uint32_t i = 0; i < props->count_props; ++i) {
    drmModePropertyRes* p = drmModeGetProperty(fd, props->props[i]);
    if (p == nullptr) continue;
    out.ids[p->name] = p->prop_id;
    out.values[p->name] = props->prop_values[i];
    drmModeFreeProperty(p);
  }
  drmModeFreeObjectProperties(props);
  return out;
}

absl::StatusOr<uint32_t> ObjectProps::Id(absl::string_view name) const {
  auto it = ids.find(std::string(name));
  if (it == ids.end()) {
    return absl::NotFoundError(absl::StrCat("KMS object ", object_id, " has no property ", name));
  }
  return it->second;
}

absl::StatusOr<uint32_t> DrmDevice::ImportHandle(int prime_fd) {
  if (!Owned()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, " was opened by this process's parent (before a fork)"));
  }
  absl::MutexLock lock(&mu_);
  uint32_t handle = 0;
  if (drmPrimeFDToHandle(fd_.get(), prime_fd, &handle) != 0) {
    return ErrnoStatus(errno, absl::StrCat("PRIME import into ", path_));
  }
  ++handle_refs_[handle];
  return handle;
}

void DrmDevice::AdoptHandle(uint32_t handle) {
  absl::MutexLock lock(&mu_);
  ++handle_refs_[handle];
}

void DrmDevice::ReleaseHandle(uint32_t handle) {
  // In a forked child: the parent's handle (the file is shared), and the
  // lock may have been held by a parent thread at the fork: not taken.
  if (!Owned()) return;
  absl::MutexLock lock(&mu_);
  auto it = handle_refs_.find(handle);
  if (it == handle_refs_.end() || --it->second > 0) return;
  handle_refs_.erase(it);
  drm_gem_close close_args = {};
  close_args.handle = handle;
  drmIoctl(fd_.get(), DRM_IOCTL_GEM_CLOSE, &close_args);
}

}  // namespace halloc::compositor
