#include "service/backend/halloc_backend.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "kernel/uapi/halloc_heap.h"
#include "service/backend/dmabuf_refs.h"

namespace halloc {
namespace {

// Copies `s` into a NUL-terminated kernel name field, truncating.
template <size_t N>
void CopyName(char (&field)[N], absl::string_view s) {
  const size_t n = std::min(s.size(), N - 1);
  std::memcpy(field, s.data(), n);
  field[n] = '\0';
}

// Opens one of the module's nodes (NodeOpenError when it cannot).
absl::StatusOr<UniqueFd> OpenNode(const std::string& path, int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (!fd) return NodeOpenError("halloc", path, errno, "is halloc_heap.ko loaded?");
  return fd;
}

// The module's device nodes.
class DeviceNodes : public HallocNodes {
 public:
  DeviceNodes(UniqueFd heap, UniqueFd contig, UniqueFd protected_heap, UniqueFd deferred,
              UniqueFd control)
      : heap_(std::move(heap)),
        contig_(std::move(contig)),
        protected_(std::move(protected_heap)),
        deferred_(std::move(deferred)),
        control_(std::move(control)) {}
  int Alloc(HallocHeap heap, dma_heap_allocation_data* data) override {
    const UniqueFd& node = Node(heap);
    if (!node) return ENODEV;
    return Errno(RetryIoctl(node.get(), DMA_HEAP_IOCTL_ALLOC, data));
  }
  bool HasProtected() const override { return protected_.is_valid(); }
  bool HasDeferred() const override { return deferred_.is_valid(); }
  int View(halloc_view_data* view) override {
    return Errno(RetryIoctl(control_.get(), HALLOC_IOCTL_VIEW, view));
  }
  // A module with the ioctl judges the fd (EBADF); one without does not
  // know the command (ENOTTY).
  bool HasRevoke() const override {
    halloc_revoke_data probe{};
    probe.fd = -1;
    probe.view_id = 1;
    return RetryIoctl(control_.get(), HALLOC_IOCTL_REVOKE, &probe) != 0 && errno == EBADF;
  }
  int Revoke(halloc_revoke_data* revoke) override {
    return Errno(RetryIoctl(control_.get(), HALLOC_IOCTL_REVOKE, revoke));
  }
  int SetName(int dmabuf, const char* name) override {
    return Errno(RetryIoctl(dmabuf, DMA_BUF_SET_NAME, const_cast<char*>(name)));
  }
  int Info(halloc_buffer_info* info) override {
    return Errno(RetryIoctl(control_.get(), HALLOC_IOCTL_INFO, info));
  }
  int IsLastFile(int dmabuf) override { return DmaBufIsLastReference(dmabuf); }

 private:
  static int Errno(int r) { return r == 0 ? 0 : errno; }
  const UniqueFd& Node(HallocHeap heap) const {
    switch (heap) {
      case HallocHeap::kSystem: return heap_;
      case HallocHeap::kContig: return contig_;
      case HallocHeap::kProtected: return protected_;
      case HallocHeap::kDeferred: return deferred_;
    }
    return heap_;
  }
  const UniqueFd heap_, contig_, protected_, deferred_, control_;
};

const char* HeapName(HallocHeap heap) {
  switch (heap) {
    case HallocHeap::kSystem: return HALLOC_HEAP_SYSTEM;
    case HallocHeap::kContig:
      return HALLOC_HEAP_CONTIG " (a device the client may attach to needs contiguous memory)";
    case HallocHeap::kProtected: return HALLOC_HEAP_PROTECTED;
    case HallocHeap::kDeferred: return HALLOC_HEAP_DEFERRED;
  }
  return "?";
}

// Optional nodes: a module without them serves less (see the header), an
// empty fd. One that is there but closed to hallocd, while the others are
// open to it, is a setup mistake: dropped with a warning, or its
// PERMISSION_DENIED (Create's `skip_closed_nodes`).
absl::StatusOr<UniqueFd> OpenOptionalNode(const std::string& path, bool skip_closed_nodes) {
  absl::StatusOr<UniqueFd> fd = OpenNode(path, O_RDONLY);
  if (fd.ok()) return fd;
  if (absl::IsPermissionDenied(fd.status())) {
    if (!skip_closed_nodes) return fd;
    LOG(WARNING) << fd.status().message() << "; its heap is left out";
  }
  return UniqueFd();
}

}  // namespace

std::unique_ptr<HallocBackend> HallocBackend::CreateWithNodes(
    std::unique_ptr<HallocNodes> nodes, std::vector<std::string> contig_only) {
  return std::unique_ptr<HallocBackend>(
      new HallocBackend(std::move(nodes), std::move(contig_only)));
}

absl::StatusOr<std::unique_ptr<HallocBackend>> HallocBackend::Create(HallocBackendPaths paths,
                                                                     bool skip_closed_nodes) {
  ASSIGN_OR_RETURN(UniqueFd heap, OpenNode(paths.heap, O_RDONLY));
  ASSIGN_OR_RETURN(UniqueFd contig, OpenNode(paths.contig_heap, O_RDONLY));
  ASSIGN_OR_RETURN(UniqueFd control, OpenNode(paths.control, O_RDWR));
  ASSIGN_OR_RETURN(UniqueFd protected_heap,
                   OpenOptionalNode(paths.protected_heap, skip_closed_nodes));
  ASSIGN_OR_RETURN(UniqueFd deferred, OpenOptionalNode(paths.deferred_heap, skip_closed_nodes));
  std::vector<std::string> contig_only;
  std::ifstream param(paths.contig_only_drivers);
  std::string list;
  if (std::getline(param, list)) {
    for (absl::string_view d : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      contig_only.emplace_back(absl::StripAsciiWhitespace(d));
    }
  }
  return CreateWithNodes(
      std::make_unique<DeviceNodes>(std::move(heap), std::move(contig), std::move(protected_heap),
                                    std::move(deferred), std::move(control)),
      std::move(contig_only));
}

bool HallocBackend::NeedsContig(const BackendRequest& request) const {
  if (!request.attach_drivers.has_value()) return false;  // any device: unknown
  for (const std::string& driver : *request.attach_drivers) {
    if (std::find(contig_only_.begin(), contig_only_.end(), driver) !=
        contig_only_.end()) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<UniqueFd> HallocBackend::Allocate(const BackendRequest& request) {
  if (request.size == 0) {
    return absl::InvalidArgumentError("halloc: size 0");
  }
  const bool protect = (request.usage & usage::kProtected) != 0;
  const bool deferred = !protect && nodes_->HasDeferred();
  const bool contig = !deferred && NeedsContig(request);
  if (protect && contig) {
    return absl::FailedPreconditionError(
        "halloc: protected buffers come from halloc-protected, which is not "
        "physically contiguous, and a device the client may attach to needs "
        "contiguous memory");
  }
  // halloc-deferred lets the kernel decide from the devices that attach.
  const HallocHeap heap = protect    ? HallocHeap::kProtected
                          : deferred ? HallocHeap::kDeferred
                          : contig   ? HallocHeap::kContig
                                     : HallocHeap::kSystem;
  dma_heap_allocation_data data{};
  data.len = request.size;
  data.fd_flags = O_RDWR | O_CLOEXEC;
  if (const int err = nodes_->Alloc(heap, &data); err != 0) {
    // ENOMEM covers both "larger than the heap's limit" and "short of
    // memory": RESOURCE_EXHAUSTED either way (the daemon's own size limit
    // rejects absurd sizes earlier with INVALID_ARGUMENT); the rest is
    // hallocd's own call going wrong: INTERNAL.
    return OwnErrnoStatus(
        err, absl::StrCat("DMA_HEAP_IOCTL_ALLOC(", request.size, ") on ", HeapName(heap)));
  }
  UniqueFd fd(static_cast<int>(data.fd));
  // The name shows in /proc/<pid>/fdinfo and the module's debugfs. A failure
  // here loses nothing but the label.
  char name[DMA_BUF_NAME_LEN];
  CopyName(name, absl::StrCat("halloc:", request.name));
  (void)nodes_->SetName(fd.get(), name);
  return fd;
}

absl::StatusOr<UniqueFd> HallocBackend::OpenView(const UniqueFd& buffer,
                                                 const ViewRights& rights) {
  ASSIGN_OR_RETURN(RevocableView view, OpenRevocableView(buffer, rights));
  return std::move(view.fd);
}

int HallocBackend::IsLastReference(int fd) const {
  halloc_buffer_info info{};
  info.fd = fd;
  if (const int err = nodes_->Info(&info); err != 0) return -err;
  if (info.path_refs != 0) {
    // The module counts both: fds, mappings and importers hold the file;
    // an O_PATH open through /proc holds only the dentry, which is what
    // keeps a dma-buf alive.
    if (info.file_refs > 1 || info.path_refs > 1) return 0;
  } else {
    // A module before them: the file's count from fdinfo (blind to O_PATH).
    const int last = nodes_->IsLastFile(fd);
    if (last != 1) return last;
  }
  // Views hold the pages through dma-bufs of their own.
  return info.dmabufs <= 1 ? 1 : 0;
}

absl::Status HallocBackend::RevokeView(const UniqueFd& buffer, uint64_t id) {
  halloc_revoke_data revoke{};
  revoke.fd = buffer.get();
  revoke.view_id = id;
  if (const int err = nodes_->Revoke(&revoke); err != 0) {
    if (err == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("halloc: view ", id, " has no fd left to revoke"));
    }
    return OwnErrnoStatus(err, "HALLOC_IOCTL_REVOKE");
  }
  return absl::OkStatus();
}

absl::StatusOr<Backend::RevocableView> HallocBackend::OpenRevocableView(
    const UniqueFd& buffer, const ViewRights& rights) {
  halloc_view_data view{};
  view.source_fd = buffer.get();
  view.fd_flags = O_CLOEXEC;
  view.cpu_access = ToKernel(rights.cpu);
  if (rights.attach_drivers.has_value()) {
    if (rights.attach_drivers->size() > HALLOC_MAX_DRIVERS) {
      // The policy's attach_devices, not the caller's request.
      return absl::FailedPreconditionError(absl::StrCat("halloc: a view allows at most ",
                                                        HALLOC_MAX_DRIVERS, " drivers, got ",
                                                        rights.attach_drivers->size()));
    }
    view.flags |= HALLOC_VIEW_RESTRICT_ATTACH;
    for (const std::string& driver : *rights.attach_drivers) {
      if (driver.empty() || driver.size() >= HALLOC_NAME_LEN) {
        return absl::FailedPreconditionError(
            absl::StrCat("halloc: bad driver name '", driver, "' (policy attach_devices)"));
      }
      CopyName(view.drivers[view.num_drivers++], driver);
    }
  }
  CopyName(view.name, "halloc-view");
  // On hallocd's own full-rights fd: no failure is the caller's to fix.
  if (const int err = nodes_->View(&view); err != 0) {
    return OwnErrnoStatus(err, "HALLOC_IOCTL_VIEW");
  }
  return RevocableView{UniqueFd(static_cast<int>(view.fd)), view.view_id};
}

}  // namespace halloc
