// Rights on a plain dma-buf: what the dmaheap and udmabuf backends can and
// cannot enforce, in one place.
//
// An upstream dma-buf fd carries no per-fd rights. The exporter makes its
// file O_RDWR whatever fd_flags asked for, mmap and DMA_BUF_IOCTL_SYNC check
// nothing else, and dma_buf_attach lets any device in. A read-only copy
// cannot be made either: a dma-buf file cannot be reopened (open() of
// /proc/self/fd/N on a dma-buf fails, its inode has no open method), so
// there is no second open file description to narrow. Hence only
// read-write, never an attach allow-list, never protected content; every
// narrower request gets FAILED_PRECONDITION, as memfd answers for CPU none.
#ifndef HALLOC_SERVICE_BACKEND_PLAIN_VIEW_H_
#define HALLOC_SERVICE_BACKEND_PLAIN_VIEW_H_

#include <linux/dma-buf.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "service/backend/backend.h"
#include "service/backend/dmabuf_refs.h"

namespace halloc {

// What Backend::CanEnforce answers for a plain dma-buf.
inline bool PlainDmabufCanEnforce(CpuAccess access) {
  return access == CpuAccess::kReadWrite;
}

// Backend::OpenView for a plain dma-buf of backend `backend`: another fd for
// the same file when `rights` narrow nothing, FAILED_PRECONDITION otherwise.
inline absl::StatusOr<UniqueFd> OpenPlainDmabufView(absl::string_view backend,
                                                    const UniqueFd& buffer,
                                                    const ViewRights& rights) {
  if (rights.attach_drivers.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        backend, " backend cannot limit which devices attach a buffer (an "
                 "upstream dma-buf lets every device attach)"));
  }
  if (rights.cpu != CpuAccess::kReadWrite) {
    return absl::FailedPreconditionError(absl::StrCat(
        backend, " backend cannot enforce CPU access ", CpuAccessName(rights.cpu),
        " (an upstream dma-buf fd is always read-write and cannot be reopened "
        "narrower); use the halloc backend"));
  }
  return buffer.Dup();
}

// Base of the backends whose buffers are plain dma-bufs (dmaheap, udmabuf):
// the rights answers above, once.
class PlainDmabufBackend : public Backend {
 public:
  bool MakesDmaBufs() const override { return true; }
  bool CanEnforce(CpuAccess access) const override { return PlainDmabufCanEnforce(access); }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override {
    return OpenPlainDmabufView(name(), buffer, rights);
  }
  // Every narrowing goes to OpenView, which refuses it.
  bool NeedsView(const ViewRights& rights) const override { return rights.Narrows(); }
  // A dma-buf's end raises no event; its fdinfo counts its references.
  LastReference last_reference() const override { return LastReference::kPolled; }
  int IsLastReference(int fd) const override { return DmaBufIsLastReference(fd); }
};

// The name a plain dma-buf gets (DMA_BUF_SET_NAME; shown in
// /proc/<pid>/fdinfo): "halloc:<name>", cut to the kernel's limit.
inline std::string PlainDmabufLabel(absl::string_view name) {
  std::string label = absl::StrCat("halloc:", name);
  if (label.size() >= DMA_BUF_NAME_LEN) label.resize(DMA_BUF_NAME_LEN - 1);
  return label;
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_PLAIN_VIEW_H_
