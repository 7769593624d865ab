// Internal to //clients/compositor:kms: the open DRM node a display and its
// framebuffers share, and KMS property lookups.
#ifndef HALLOC_CLIENTS_COMPOSITOR_DRM_DEVICE_H_
#define HALLOC_CLIENTS_COMPOSITOR_DRM_DEVICE_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::compositor {

class DrmDevice {
 public:
  DrmDevice(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  UniqueFd fd_;
  std::string path_;
};

// Property name → id of one KMS object (DRM_MODE_OBJECT_CONNECTOR, _CRTC,
// _PLANE), and each property's current value.
struct ObjectProps {
  uint32_t object_id = 0;
  std::map<std::string, uint32_t> ids;
  std::map<std::string, uint64_t> values;
  // NOT_FOUND naming the object when it has no such property.
  absl::StatusOr<uint32_t> Id(absl::string_view name) const;
};
absl::StatusOr<ObjectProps> GetProps(int fd, uint32_t object_id, uint32_t type);

}  // namespace halloc::compositor

#endif  // HALLOC_CLIENTS_COMPOSITOR_DRM_DEVICE_H_
