#include "service/backend/memfd_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc {

MemfdBackend::MemfdBackend(std::string udmabuf)
    : udmabuf_present_(::access(udmabuf.c_str(), F_OK) == 0) {}

absl::StatusOr<UniqueFd> MemfdBackend::Allocate(const BackendRequest& request) {
  if (request.size == 0 ||
      request.size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memfd: bad size ", request.size));
  }
  const std::string name = absl::StrCat("halloc:", request.name);
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return ErrnoStatus(errno, "memfd_create");
  // memfd inodes are created mode 0777, and open("/proc/self/fd/N") checks
  // the inode's mode, not the access mode of the fd it names: any holder of
  // a read-only view could reopen it O_RDWR and write into the buffer. Owner
  // read only: the daemon (owner) can still reopen read-only views even when
  // it is not root; any other uid gets EACCES on every reopen. Open file
  // descriptions keep the access mode they were opened with. Root holders
  // (CAP_DAC_OVERRIDE) and holders with the daemon's uid (who may fchmod the
  // inode back) are not stopped by this.
  if (::fchmod(fd.get(), kInodeMode) != 0) return ErrnoStatus(errno, "fchmod");
  if (::ftruncate(fd.get(), static_cast<off_t>(request.size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate(", request.size, ")"));
  }
  if (::fcntl(fd.get(), F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus(errno, "fcntl(F_ADD_SEALS)");
  }
  return fd;
}

absl::StatusOr<UniqueFd> MemfdBackend::OpenView(const UniqueFd& buffer,
                                                const ViewRights& rights) {
  if (rights.attach_drivers.has_value() && !CanLimitAttach()) {
    return absl::FailedPreconditionError(
        "memfd backend cannot limit which devices attach a buffer while "
        "/dev/udmabuf exists (any holder can convert a memfd to a dma-buf)");
  }
  switch (rights.cpu) {
    case CpuAccess::kReadWrite:
      return buffer.Dup();
    case CpuAccess::kRead: {
      if (!CanEnforce(CpuAccess::kRead)) {
        return absl::FailedPreconditionError(
            "memfd backend cannot keep a buffer read-only while /dev/udmabuf "
            "exists (a read-only holder could make a writable dma-buf of it)");
      }
      // A new open file description, read-only: rights travel with it.
      const std::string path = absl::StrCat("/proc/self/fd/", buffer.get());
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) return ErrnoStatus(errno, absl::StrCat("open(", path, ")"));
      return fd;
    }
    case CpuAccess::kNone:
      break;
  }
  return absl::FailedPreconditionError(
      "memfd backend cannot enforce CPU access NONE (any holder of a memfd "
      "can map it); use a dma-buf backend");
}

}  // namespace halloc
