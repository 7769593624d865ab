// The open DRM node a KMS display and its framebuffers share (its GEM
// handles, counted), and KMS property lookups: //clients/compositor:kms's,
// and its guest test's (tests/kernel/vgem_test.cc).
#ifndef HALLOC_CLIENTS_COMPOSITOR_DRM_DEVICE_H_
#define HALLOC_CLIENTS_COMPOSITOR_DRM_DEVICE_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/fork.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::compositor {

class DrmDevice {
 public:
  DrmDevice(UniqueFd fd, std::string path)
      : fd_(std::move(fd)), path_(std::move(path)), generation_(ForkGeneration()) {}
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  // Whether this process is the one that opened it. A forked child shares
  // the DRM file, and with it the GEM handles, framebuffers and the display
  // state: what it lets go of must not be closed for the parent (handles
  // closed, the screen turned off), so the teardown ioctls are the
  // opener's only, and a child may not import or present.
  bool Owned() const { return ForkGeneration() == generation_; }

  // The GEM handle of dma-buf `prime_fd` on this device (PRIME import),
  // counted: the kernel gives one handle per dma-buf per DRM file, so two
  // imports of one buffer share it, and closing it for the first would
  // leave the second with a handle number the next import or dumb buffer
  // may be given. Each import takes a reference; ReleaseHandle gives one
  // back and closes the handle with the last (as minigbm and Mesa count
  // theirs).
  absl::StatusOr<uint32_t> ImportHandle(int prime_fd);
  // Counts a handle made otherwise (a dumb buffer's), for ReleaseHandle.
  void AdoptHandle(uint32_t handle);
  void ReleaseHandle(uint32_t handle);

 private:
  UniqueFd fd_;
  std::string path_;
  const uint64_t generation_;
  // Held across the ioctls too: an import that returns a handle another
  // thread is closing would get a dead one.
  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, int> handle_refs_ ABSL_GUARDED_BY(mu_);
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
