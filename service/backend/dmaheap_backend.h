// dmaheap backend: dma-bufs from any upstream dma-heap node
// (/dev/dma_heap/<name>: system, linux,cma, ...) through the upstream UAPI
// alone (<linux/dma-heap.h>, DMA_HEAP_IOCTL_ALLOC). hallocd gets real
// dma-bufs on a stock kernel without halloc_heap.ko.
//
// Rights: read-write only (plain_view.h). An upstream heap's dma-buf carries
// no per-fd rights, so CPU read/none, attach allow-lists and protected
// usage are refused with FAILED_PRECONDITION, as memfd refuses CPU none.
//
// Which heap: the one named (hallocd --dma_heap), else the first present of
// kPreferredHeaps: general-purpose heaps only. Any other is used only by
// name: a vendor's secure, uncached or carveout heap is not what a client
// asking for ordinary memory expects (nor zero-filled, CPU-mappable memory
// at all, maybe), and the CMA area ("linux,cma", "reserved") is what
// cameras and displays need contiguous buffers from, not to be used up by
// any client that asks.
#ifndef HALLOC_SERVICE_BACKEND_DMAHEAP_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_DMAHEAP_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/backend/backend.h"
#include "service/backend/plain_view.h"

struct dma_heap_allocation_data;

namespace halloc {

// The heap node's ioctls, behind an interface so that tests can stand in a
// fake (dmaheap_backend_test.cc). Each returns 0 or an errno.
class DmaHeapNode {
 public:
  virtual ~DmaHeapNode() = default;
  // DMA_HEAP_IOCTL_ALLOC.
  virtual int Alloc(dma_heap_allocation_data* data) = 0;
  // DMA_BUF_SET_NAME on a dma-buf.
  virtual int SetName(int dmabuf, const char* name) = 0;
};

// Heaps tried in this order when none is named: the upstream system heap,
// the usual names of the CMA heap, then halloc_heap.ko's general heap (so
// that a forced --backend=dmaheap beside the module never lands on its
// contiguous or protected heap by name order).
inline constexpr const char* kPreferredHeaps[] = {"system", "halloc-system"};

// The heap to use in `dir` (a /dev/dma_heap): `name` when set and present;
// else the first present of kPreferredHeaps. FAILED_PRECONDITION when `dir`
// has no such node (naming those it has, which --dma_heap may name).
absl::StatusOr<std::string> ChooseDmaHeap(const std::string& dir, const std::string& name);

struct DmaHeapOptions {
  std::string dir = "/dev/dma_heap";
  // Empty: chosen by ChooseDmaHeap.
  std::string heap;
};

class DmaHeapBackend : public PlainDmabufBackend {
 public:
  // FAILED_PRECONDITION when no usable heap node is there or it cannot be
  // opened. Keeps the node open (one fd) for the backend's life.
  static absl::StatusOr<std::unique_ptr<DmaHeapBackend>> Create(DmaHeapOptions options = {});
  // Over `node` (tests); `heap` names it in messages.
  static std::unique_ptr<DmaHeapBackend> CreateWithNode(std::unique_ptr<DmaHeapNode> node,
                                                        std::string heap);

  absl::string_view name() const override { return "dmaheap"; }
  // The heap node's name, e.g. "system".
  const std::string& heap() const { return heap_; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;

 private:
  DmaHeapBackend(std::unique_ptr<DmaHeapNode> node, std::string heap)
      : node_(std::move(node)), heap_(std::move(heap)) {}

  const std::unique_ptr<DmaHeapNode> node_;
  const std::string heap_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_DMAHEAP_BACKEND_H_
