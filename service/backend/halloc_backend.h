// halloc backend: dma-bufs from the halloc_heap.ko heaps (kernel/).
//
// Memory comes from /dev/dma_heap/halloc-system through the upstream
// dma-heap UAPI; every fd handed to a client that may do less than
// everything is a kernel *view* (HALLOC_IOCTL_VIEW on /dev/halloc) that
// carries the client's rights: CPU none / read / read-write, and the drivers
// whose devices may attach it. The kernel enforces them in mmap,
// DMA_BUF_IOCTL_SYNC and dma_buf_attach for whoever holds the fd, including
// processes the client passes it on to. Rights only narrow: a view of a view
// can never widen.
#ifndef HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/backend/backend.h"

namespace halloc {

struct HallocBackendPaths {
  std::string heap = "/dev/dma_heap/halloc-system";
  std::string control = "/dev/halloc";
};

class HallocBackend : public Backend {
 public:
  // FAILED_PRECONDITION when the module's nodes are not there (module not
  // loaded) or cannot be opened.
  static absl::StatusOr<std::unique_ptr<HallocBackend>> Create(
      HallocBackendPaths paths = {});

  absl::string_view name() const override { return "halloc"; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;
  bool CanEnforce(CpuAccess) const override { return true; }
  bool CanLimitAttach() const override { return true; }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override;
  bool NeedsView(const ViewRights& rights) const override {
    return rights.Narrows();
  }

 private:
  HallocBackend(UniqueFd heap, UniqueFd control)
      : heap_(std::move(heap)), control_(std::move(control)) {}

  const UniqueFd heap_;
  const UniqueFd control_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_
