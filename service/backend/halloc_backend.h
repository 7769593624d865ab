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
//
// Which heap. hallocd cannot know at allocation time which devices a
// buffer will meet, so where the module has halloc-deferred every request
// but PROTECTED goes there: the kernel backs the buffer at its first use,
// from the devices actually attached by then (one contiguous run if one of
// them needs it, pages below the strictest DMA mask), and refuses a later
// device the pages cannot serve (EBUSY at attach). Usage PROTECTED gets
// halloc-protected: pages no CPU may touch, every fd of them CPU-none in
// the kernel (when the module has that heap; otherwise CanProtect() is
// false and the core refuses the usage).
//
// Fallback, on a module without halloc-deferred: a guess from the policy.
// A client whose rule lets it attach buffers only to devices that need
// physically contiguous memory (the module's contig_only_drivers, e.g.
// vivid with videobuf2-dma-contig) gets halloc-contig memory, so that its
// camera can use the buffer; when that heap cannot supply the size the
// allocation fails (RESOURCE_EXHAUSTED) rather than hand out pages the
// device would refuse. Everyone else gets halloc-system.
//
// Live revoke. Every view carries a kernel id; RevokeView cuts it off with
// the authority of the buffer's original fd (HALLOC_IOCTL_REVOKE): its
// mappings in every process fault, new maps, syncs and attaches fail.
#ifndef HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/backend/backend.h"

struct dma_heap_allocation_data;
struct halloc_buffer_info;
struct halloc_revoke_data;
struct halloc_view_data;

namespace halloc {

// The module's ioctls, behind an interface so that tests can stand in fake
// nodes (halloc_backend_test.cc); the real ones act on the module's device
// nodes. Each returns 0 or an errno.
enum class HallocHeap { kSystem, kContig, kProtected, kDeferred };

class HallocNodes {
 public:
  virtual ~HallocNodes() = default;
  // DMA_HEAP_IOCTL_ALLOC on one of the module's heaps.
  virtual int Alloc(HallocHeap heap, dma_heap_allocation_data* data) = 0;
  // Whether the module has the halloc-protected heap.
  virtual bool HasProtected() const = 0;
  // Whether the module has the halloc-deferred heap.
  virtual bool HasDeferred() const = 0;
  // HALLOC_IOCTL_VIEW on /dev/halloc.
  virtual int View(halloc_view_data* view) = 0;
  // Whether the module has HALLOC_IOCTL_REVOKE (modules before it lack it).
  virtual bool HasRevoke() const = 0;
  // HALLOC_IOCTL_REVOKE on /dev/halloc.
  virtual int Revoke(halloc_revoke_data* revoke) = 0;
  // DMA_BUF_SET_NAME on a dma-buf.
  virtual int SetName(int dmabuf, const char* name) = 0;
  // HALLOC_IOCTL_INFO on /dev/halloc.
  virtual int Info(halloc_buffer_info* info) = 0;
  // Whether `dmabuf`'s file has no reference but this fd: 1, 0, -errno
  // (dmabuf_refs.h).
  virtual int IsLastFile(int dmabuf) = 0;
};

struct HallocBackendPaths {
  std::string heap = "/dev/dma_heap/halloc-system";
  std::string contig_heap = "/dev/dma_heap/halloc-contig";
  // Optional (modules before it lack it): PROTECTED usage needs it.
  std::string protected_heap = "/dev/dma_heap/halloc-protected";
  // Optional (modules before it lack it): without it the heap is guessed
  // from the policy (see above).
  std::string deferred_heap = "/dev/dma_heap/halloc-deferred";
  std::string control = "/dev/halloc";
  // The module's list of drivers whose devices need one physically
  // contiguous segment (comma-separated), read once at start.
  std::string contig_only_drivers =
      "/sys/module/halloc_heap/parameters/contig_only_drivers";
};

class HallocBackend : public Backend {
 public:
  // FAILED_PRECONDITION when the module's nodes are not there (module not
  // loaded), PERMISSION_DENIED when they are closed to hallocd
  // (NodeOpenError). An optional heap's node closed while the others are
  // open drops that heap with a warning when `skip_closed_nodes` (a user's
  // hallocd: it keeps the heaps that enforce), else it is refused too (the
  // unit: a setup mistake).
  static absl::StatusOr<std::unique_ptr<HallocBackend>> Create(HallocBackendPaths paths = {},
                                                               bool skip_closed_nodes = true);
  // Over `nodes` (tests), with the module's contig_only_drivers list.
  static std::unique_ptr<HallocBackend> CreateWithNodes(std::unique_ptr<HallocNodes> nodes,
                                                        std::vector<std::string> contig_only);

  absl::string_view name() const override { return "halloc"; }
  bool MakesDmaBufs() const override { return true; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;
  bool CanEnforce(CpuAccess) const override { return true; }
  bool CanLimitAttach() const override { return true; }
  bool CanProtect() const override { return nodes_->HasProtected(); }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override;
  bool NeedsView(const ViewRights& rights) const override {
    return rights.Narrows();
  }
  bool CanRevokeLive() const override { return nodes_->HasRevoke(); }
  absl::StatusOr<RevocableView> OpenRevocableView(
      const UniqueFd& buffer, const ViewRights& rights) override;
  absl::Status RevokeView(const UniqueFd& buffer, uint64_t id) override;
  // Polled: the original's file has no other reference (fds, mappings,
  // importers), nothing else holds its dentry (an O_PATH open through
  // /proc), and no view of the buffer is alive (a view is a dma-buf of its
  // own over the same pages): HALLOC_IOCTL_INFO's file_refs, path_refs
  // and dmabufs (before file_refs and path_refs: fdinfo's count).
  LastReference last_reference() const override { return LastReference::kPolled; }
  int IsLastReference(int fd) const override;

 private:
  HallocBackend(std::unique_ptr<HallocNodes> nodes, std::vector<std::string> contig_only)
      : nodes_(std::move(nodes)), contig_only_(std::move(contig_only)) {}
  // Whether `request` must come from the contiguous heap (the guess made
  // without halloc-deferred, and for PROTECTED).
  bool NeedsContig(const BackendRequest& request) const;

  const std::unique_ptr<HallocNodes> nodes_;
  const std::vector<std::string> contig_only_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_HALLOC_BACKEND_H_
