// memfd backend: sealed memfds. Runs everywhere (no device needed).
//
// Each buffer is memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), sized, and
// sealed against shrinking, growing and further seals. CPU read-only is
// enforced by handing out a read-only open file description (reopened from
// /proc/self/fd), so PROT_WRITE shared mappings and mprotect to write fail in
// every process that holds it. The inode is made mode 0400 (kInodeMode) so
// that a holder of another uid cannot reopen that fd writable through
// /proc/<pid>/fd; root holders and holders with the daemon's uid can. "No CPU
// access" cannot be enforced on a memfd.
#ifndef HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_

#include <sys/types.h>

#include <string>

#include "service/backend/backend.h"

namespace halloc {

class MemfdBackend : public Backend {
 public:
  // `udmabuf` is where the kernel's memfd → dma-buf converter would be: if
  // it exists, any holder can turn a memfd into a dma-buf and attach it to
  // any device, so attach limits cannot be enforced; if not, no device can
  // attach a memfd at all (the strictest limit holds trivially).
  explicit MemfdBackend(std::string udmabuf = "/dev/udmabuf");

  // Mode of every buffer's inode: owner (the daemon's uid) read only, so
  // read-only views can still be reopened by a non-root daemon, and nobody
  // else can reopen the memfd at all.
  static constexpr mode_t kInodeMode = 0400;

  absl::string_view name() const override { return "memfd"; }
  bool MakesDmaBufs() const override { return false; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;
  // Read-only holds only without udmabuf: UDMABUF_CREATE checks a memfd's
  // seals, not whether the fd it is given is writable, so a read-only holder
  // could make a writable dma-buf over the same pages.
  bool CanEnforce(CpuAccess access) const override {
    return access == CpuAccess::kReadWrite ||
           (access == CpuAccess::kRead && !udmabuf_present_);
  }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override;
  bool CanLimitAttach() const override { return !udmabuf_present_; }
  // A memfd's last fd or mapping is observable. (Where udmabuf exists, a
  // dma-buf made from the memfd holds its pages without holding its file:
  // that memory is then followed only as far as fds and mappings go.)
  LastReference last_reference() const override { return LastReference::kWatched; }

 private:
  bool udmabuf_present_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_
