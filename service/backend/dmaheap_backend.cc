#include "service/backend/dmaheap_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc {
namespace {

int Errno(int r) { return r == 0 ? 0 : errno; }

class DeviceNode : public DmaHeapNode {
 public:
  explicit DeviceNode(UniqueFd fd) : fd_(std::move(fd)) {}
  int Alloc(dma_heap_allocation_data* data) override {
    return Errno(RetryIoctl(fd_.get(), DMA_HEAP_IOCTL_ALLOC, data));
  }
  int SetName(int dmabuf, const char* name) override {
    return Errno(RetryIoctl(dmabuf, DMA_BUF_SET_NAME, const_cast<char*>(name)));
  }

 private:
  const UniqueFd fd_;
};

// The entries of `dir` other than . and .., in name order.
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dmaheap backend: cannot list ", dir, " (", std::strerror(errno),
        "); the kernel has no dma-heaps (CONFIG_DMABUF_HEAPS)"));
  }
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

absl::StatusOr<std::string> ChooseDmaHeap(const std::string& dir, const std::string& name) {
  absl::StatusOr<std::vector<std::string>> present = ListDir(dir);
  if (!present.ok()) return present.status();
  auto has = [&](absl::string_view heap) {
    return std::find(present->begin(), present->end(), heap) != present->end();
  };
  if (!name.empty()) {
    if (has(name)) return name;
    return absl::FailedPreconditionError(absl::StrCat(
        "dmaheap backend: no heap '", name, "' in ", dir, " (present: ",
        present->empty() ? "none" : absl::StrJoin(*present, ", "), ")"));
  }
  for (const char* heap : kPreferredHeaps) {
    if (has(heap)) return std::string(heap);
  }
  return absl::FailedPreconditionError(
      absl::StrCat("dmaheap backend: ", dir, " has no general-purpose heap (",
                   absl::StrJoin(kPreferredHeaps, ", "),
                   "; present: ", present->empty() ? "none" : absl::StrJoin(*present, ", "),
                   "); --dma_heap=NAME uses another"));
}

std::unique_ptr<DmaHeapBackend> DmaHeapBackend::CreateWithNode(
    std::unique_ptr<DmaHeapNode> node, std::string heap) {
  return std::unique_ptr<DmaHeapBackend>(new DmaHeapBackend(std::move(node), std::move(heap)));
}

absl::StatusOr<std::unique_ptr<DmaHeapBackend>> DmaHeapBackend::Create(DmaHeapOptions options) {
  absl::StatusOr<std::string> heap = ChooseDmaHeap(options.dir, options.heap);
  if (!heap.ok()) return heap.status();
  const std::string path = absl::StrCat(options.dir, "/", *heap);
  // The upstream UAPI needs only read access to allocate.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return NodeOpenError("dmaheap", path, errno, "it went since it was listed");
  return CreateWithNode(std::make_unique<DeviceNode>(std::move(fd)), *std::move(heap));
}

absl::StatusOr<UniqueFd> DmaHeapBackend::Allocate(const BackendRequest& request) {
  if (request.size == 0) return absl::InvalidArgumentError("dmaheap: size 0");
  dma_heap_allocation_data data{};
  data.len = request.size;
  data.fd_flags = O_RDWR | O_CLOEXEC;
  if (const int err = node_->Alloc(&data); err != 0) {
    // ENOMEM: larger than the heap can give or short of memory, both
    // RESOURCE_EXHAUSTED (os_error.h); the rest is hallocd's: INTERNAL.
    return OwnErrnoStatus(err, absl::StrCat("DMA_HEAP_IOCTL_ALLOC(", request.size, ") on ", heap_));
  }
  UniqueFd fd(static_cast<int>(data.fd));
  // The name shows in /proc/<pid>/fdinfo; a failure loses only the label.
  (void)node_->SetName(fd.get(), PlainDmabufLabel(request.name).c_str());
  return fd;
}

}  // namespace halloc
