#include "service/backend/memfd_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc {

namespace {

bool Exists(const std::string& path) { return !path.empty() && ::access(path.c_str(), F_OK) == 0; }

// Whether the module lists in `dir` name udmabuf (as a module or built in),
// or may: a list that is there but cannot be read (a sandbox hiding
// /usr/lib/modules, as systemd's ProtectKernelModules= does) counts as
// naming it. Only a list that is not there names nothing.
bool Listed(const std::string& dir) {
  if (dir.empty()) return false;
  for (const char* list : {"modules.dep", "modules.builtin"}) {
    const std::string path = absl::StrCat(dir, "/", list);
    if (::access(path.c_str(), R_OK) != 0) {
      if (errno == ENOENT) continue;
      return true;
    }
    std::ifstream in(path);
    if (!in) return true;
    std::string line;
    while (std::getline(in, line)) {
      // "kernel/drivers/dma-buf/udmabuf.ko[.xz]: deps" or ".../udmabuf.ko"
      const std::string path = line.substr(0, line.find(':'));
      const size_t slash = path.rfind('/');
      if (absl::StartsWith(path.substr(slash == std::string::npos ? 0 : slash + 1),
                           "udmabuf.ko")) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<UniqueFd> CreateBufferMemfd(const std::string& name) {
#ifndef MFD_NOEXEC_SEAL
  constexpr unsigned int MFD_NOEXEC_SEAL = 0x0008U;  // <linux/memfd.h>, 6.3+
#endif
  constexpr unsigned int kFlags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  UniqueFd fd(::memfd_create(name.c_str(), kFlags | MFD_NOEXEC_SEAL));
  // Before 6.3 the flag is unknown: EINVAL.
  if (!fd && errno == EINVAL) fd.reset(::memfd_create(name.c_str(), kFlags));
  if (!fd) return ErrnoStatus(errno, "memfd_create");
  return fd;
}

UdmabufSources UdmabufSources::ThisKernel() {
  UdmabufSources s;
  utsname u{};
  if (::uname(&u) == 0) s.modules_dir = absl::StrCat("/lib/modules/", u.release);
  return s;
}

MemfdBackend::MemfdBackend() : MemfdBackend(UdmabufSources::ThisKernel()) {}

MemfdBackend::MemfdBackend(std::string udmabuf_device)
    : MemfdBackend(UdmabufSources{std::move(udmabuf_device), "", ""}) {}

MemfdBackend::MemfdBackend(UdmabufSources sources)
    : MemfdBackend(std::move(sources), ::geteuid()) {}

MemfdBackend::MemfdBackend(UdmabufSources sources, uid_t owner)
    : sources_(std::move(sources)), loadable_(Listed(sources_.modules_dir)), owner_(owner) {}

bool MemfdBackend::UdmabufPossible() const {
  return loadable_ || Exists(sources_.device) || Exists(sources_.module);
}

absl::StatusOr<UniqueFd> MemfdBackend::Allocate(const BackendRequest& request) {
  if (request.size == 0 ||
      request.size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memfd: bad size ", request.size));
  }
  const std::string name = absl::StrCat("halloc:", request.name);
  ASSIGN_OR_RETURN(UniqueFd fd, CreateBufferMemfd(name));
  // memfd inodes are created mode 0777, and open("/proc/self/fd/N") checks
  // the inode's mode, not the access mode of the fd it names: any holder of
  // a read-only view could reopen it O_RDWR and write into the buffer. Owner
  // read only: the daemon (owner) can still reopen read-only views even when
  // it is not root; any other uid gets EACCES on every reopen. Open file
  // descriptions keep the access mode they were opened with. Root holders
  // (CAP_DAC_OVERRIDE) and holders with the daemon's uid (who may fchmod the
  // inode back) are not stopped by this.
  if (::fchmod(fd.get(), kInodeMode) != 0) return OwnErrnoStatus(errno, "fchmod");
  if (::ftruncate(fd.get(), static_cast<off_t>(request.size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate(", request.size, ")"));
  }
  if (::fcntl(fd.get(), F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return OwnErrnoStatus(errno, "fcntl(F_ADD_SEALS)");
  }
  return fd;
}

absl::Status MemfdBackend::CheckView(const ViewRights& rights) const {
  if (rights.attach_drivers.has_value() && !CanLimitAttach()) {
    return absl::FailedPreconditionError(
        "memfd backend cannot limit which devices attach a buffer where udmabuf "
        "is loaded or loadable (any holder could convert a memfd to a dma-buf)");
  }
  switch (rights.cpu) {
    case CpuAccess::kReadWrite:
      return absl::OkStatus();
    case CpuAccess::kRead:
      if (!CanEnforce(CpuAccess::kRead)) {
        return absl::FailedPreconditionError(
            "memfd backend cannot keep a buffer read-only where udmabuf is loaded "
            "or loadable (a read-only holder could make a writable dma-buf of it)");
      }
      return absl::OkStatus();
    case CpuAccess::kNone:
      break;
  }
  return absl::FailedPreconditionError(
      "memfd backend cannot enforce CPU access NONE (any holder of a memfd "
      "can map it); use a dma-buf backend");
}

absl::StatusOr<UniqueFd> MemfdBackend::OpenView(const UniqueFd& buffer, const ViewRights& rights) {
  RETURN_IF_ERROR(CheckView(rights));
  if (rights.cpu == CpuAccess::kReadWrite) return buffer.Dup();
  // A new open file description, read-only: rights travel with it. (An
  // attach list is no part of it: no device can attach a memfd where
  // CheckView lets one be given.)
  const std::string path = absl::StrCat("/proc/self/fd/", buffer.get());
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  // hallocd's own memfd: EACCES or ENOENT here are no fault of the
  // caller's (not PERMISSION_DENIED, NOT_FOUND).
  if (!fd) return OwnErrnoStatus(errno, absl::StrCat("open(", path, ")"));
  return fd;
}

}  // namespace halloc
