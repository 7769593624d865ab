#include "service/backend/udmabuf_backend.h"

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/backend/memfd_backend.h"

namespace halloc {
namespace {

class DeviceNode : public UdmabufNode {
 public:
  explicit DeviceNode(UniqueFd fd) : fd_(std::move(fd)) {}
  int Create(const udmabuf_create* create) override {
    const int r = RetryIoctl(fd_.get(), UDMABUF_CREATE, const_cast<udmabuf_create*>(create));
    return r < 0 ? -errno : r;
  }
  int SetName(int dmabuf, const char* name) override {
    return RetryIoctl(dmabuf, DMA_BUF_SET_NAME, const_cast<char*>(name)) == 0 ? 0 : errno;
  }
  uint64_t SizeLimitMb() override {
    std::ifstream in("/sys/module/udmabuf/parameters/size_limit_mb");
    uint64_t mb = 0;
    return (in >> mb) ? mb : 0;
  }

 private:
  const UniqueFd fd_;
};

}  // namespace

std::unique_ptr<UdmabufBackend> UdmabufBackend::CreateWithNode(
    std::unique_ptr<UdmabufNode> node) {
  return std::unique_ptr<UdmabufBackend>(new UdmabufBackend(std::move(node)));
}

absl::StatusOr<std::unique_ptr<UdmabufBackend>> UdmabufBackend::Create(
    const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    return NodeOpenError("udmabuf", path, errno, "the kernel lacks udmabuf (CONFIG_UDMABUF)");
  }
  return CreateWithNode(std::make_unique<DeviceNode>(std::move(fd)));
}

absl::StatusOr<UniqueFd> UdmabufBackend::Allocate(const BackendRequest& request) {
  if (request.size == 0 || request.size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("udmabuf: bad size ", request.size));
  }
  const std::string name = absl::StrCat("halloc:", request.name);
  ASSIGN_OR_RETURN(UniqueFd memfd, CreateBufferMemfd(name));
  if (::ftruncate(memfd.get(), static_cast<off_t>(request.size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate(", request.size, ")"));
  }
  // udmabuf wants F_SEAL_SHRINK and refuses F_SEAL_WRITE.
  if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return OwnErrnoStatus(errno, "fcntl(F_ADD_SEALS)");
  }
  udmabuf_create create{};
  create.memfd = static_cast<uint32_t>(memfd.get());
  create.flags = UDMABUF_FLAGS_CLOEXEC;
  create.offset = 0;
  create.size = request.size;
  const int fd = node_->Create(&create);
  if (fd == -EINVAL) {
    // More than the module makes (asked only now: it may change at any
    // time) is hallocd's room, not the caller's error; so is a limit that
    // cannot be read here (/sys hidden), the likeliest cause. The rest of
    // EINVAL (an unaligned size, wrong seals) is hallocd's own: INTERNAL.
    const uint64_t limit_mb = node_->SizeLimitMb();
    if (limit_mb == 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "udmabuf refused a buffer of ", request.size,
          " bytes (EINVAL): more than its size_limit_mb, most likely (not readable here)"));
    }
    if (request.size > limit_mb * (uint64_t{1} << 20)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("udmabuf makes buffers of at most ", limit_mb,
                       " MiB (its size_limit_mb); asked for ", request.size, " bytes"));
    }
  }
  // The memfd, its seals and the size are hallocd's: nothing here is the
  // caller's to correct.
  if (fd < 0) {
    return OwnErrnoStatus(-fd, absl::StrCat("UDMABUF_CREATE(", request.size, ")"));
  }
  UniqueFd dmabuf(fd);
  // The name shows in /proc/<pid>/fdinfo; a failure loses only the label.
  (void)node_->SetName(dmabuf.get(), PlainDmabufLabel(request.name).c_str());
  return dmabuf;  // `memfd` closes here; the dma-buf keeps the pages
}

}  // namespace halloc
