// udmabuf backend: a sealed memfd turned into a dma-buf by /dev/udmabuf
// (UDMABUF_CREATE, <linux/udmabuf.h>). Real dma-bufs, importable by
// devices, on kernels that have udmabuf but no dma-heap.
//
// Each buffer is memfd_create(MFD_ALLOW_SEALING), sized, and sealed with
// F_SEAL_SHRINK (udmabuf requires it), F_SEAL_GROW and F_SEAL_SEAL, never
// F_SEAL_WRITE (udmabuf refuses it). UDMABUF_CREATE pins its pages in the
// new dma-buf; hallocd closes the memfd right after, so nobody holds a
// second, always CPU-writable handle on the memory (the memfd never leaves
// hallocd either way).
//
// Rights: read-write only (plain_view.h): CPU read/none, attach
// allow-lists and protected usage are refused with FAILED_PRECONDITION.
#ifndef HALLOC_SERVICE_BACKEND_UDMABUF_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_UDMABUF_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/backend/backend.h"
#include "service/backend/plain_view.h"

struct udmabuf_create;

namespace halloc {

// /dev/udmabuf's ioctl, behind an interface so that tests can stand in a
// fake (udmabuf_backend_test.cc). Each returns the new fd, or -errno.
class UdmabufNode {
 public:
  virtual ~UdmabufNode() = default;
  // UDMABUF_CREATE.
  virtual int Create(const udmabuf_create* create) = 0;
  // DMA_BUF_SET_NAME on a dma-buf: 0 or an errno.
  virtual int SetName(int dmabuf, const char* name) = 0;
  // The module's size_limit_mb (the largest buffer it makes, a parameter
  // root may change at any time; 64 MiB by default), 0 when unknown.
  virtual uint64_t SizeLimitMb() = 0;
};

class UdmabufBackend : public PlainDmabufBackend {
 public:
  // FAILED_PRECONDITION when `path` is missing or cannot be opened (the
  // kernel lacks udmabuf: CONFIG_UDMABUF). Keeps it open (one fd).
  static absl::StatusOr<std::unique_ptr<UdmabufBackend>> Create(
      const std::string& path = "/dev/udmabuf");
  // Over `node` (tests).
  static std::unique_ptr<UdmabufBackend> CreateWithNode(std::unique_ptr<UdmabufNode> node);

  absl::string_view name() const override { return "udmabuf"; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;

 private:
  explicit UdmabufBackend(std::unique_ptr<UdmabufNode> node) : node_(std::move(node)) {}

  const std::unique_ptr<UdmabufNode> node_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_UDMABUF_BACKEND_H_
