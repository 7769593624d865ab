// memfd backend: sealed memfds. Runs everywhere (no device needed).
//
// Each buffer is memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), sized, and
// sealed against shrinking, growing and further seals. CPU read-only is
// enforced by handing out a read-only open file description (reopened from
// /proc/self/fd), so PROT_WRITE shared mappings and mprotect to write fail in
// every process that holds it. The inode is made mode 0400 (kInodeMode) so
// that a holder of another uid cannot reopen that fd writable through
// /proc/<pid>/fd; root holders and holders with the daemon's uid can (the
// owner may fchmod it back), so read-only binds no holder of the daemon's
// uid (CanEnforceFor). "No CPU access" cannot be enforced on a memfd.
#ifndef HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_

#include <sys/types.h>

#include <string>

#include "service/backend/backend.h"

namespace halloc {

// Where the kernel's memfd → dma-buf converter (udmabuf) could come from.
// Where it can, any holder can turn a memfd into a dma-buf and attach it to
// any device, and a read-only holder can make a writable one over the same
// pages (UDMABUF_CREATE checks seals, not the fd's access mode): neither
// read-only nor attach limits hold, for the buffers handed out before it
// came too. Where it cannot, no device can attach a memfd as a dma-buf
// (the strictest attach limit holds for dma-buf attachment). A driver that
// pins user memory (V4L2 USERPTR, RDMA memory regions, DRM userptr, VFIO)
// can still be given a mapping of one: a device writing needs a writable
// mapping (read-only views hold), a device reading does not.
struct UdmabufSources {
  // The device node, in hallocd's mount namespace.
  std::string device = "/dev/udmabuf";
  // The kernel's entry for the module, present once it is loaded (or built
  // in) whatever /dev hallocd sees (a container, PrivateDevices=).
  std::string module = "/sys/module/udmabuf";
  // The running kernel's module lists (modules.dep, modules.builtin): a
  // udmabuf listed there can be loaded at any time (by an admin, a VMM).
  // Empty: not looked at.
  std::string modules_dir;
  // The running kernel's: /lib/modules/<uname -r>.
  static UdmabufSources ThisKernel();
};

// A memfd for a buffer named `name`: close-on-exec, sealable, and (where
// the kernel has it, 6.3+) sealed against ever being made executable
// (MFD_NOEXEC_SEAL: a holder with the daemon's uid could otherwise chmod
// it +x and fexecve it; kernels set to vm.memfd_noexec=2 refuse a memfd
// without it). Older kernels get one without.
absl::StatusOr<UniqueFd> CreateBufferMemfd(const std::string& name);

class MemfdBackend : public Backend {
 public:
  // Looks at this kernel's sources (UdmabufSources::ThisKernel()).
  MemfdBackend();
  // Looks only at `udmabuf_device` (tests).
  explicit MemfdBackend(std::string udmabuf_device);
  explicit MemfdBackend(UdmabufSources sources);
  // As if hallocd ran as `owner`: the uid its read-only views do not bind
  // (0: none; root is bound by no policy anyway). Buffers are still made
  // as this process's.
  MemfdBackend(UdmabufSources sources, uid_t owner);

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
           (access == CpuAccess::kRead && !UdmabufPossible());
  }
  // Not read-only for a holder of the daemon's (non-root) uid: it owns the
  // inode, so it may fchmod it back to writable and reopen its read-only fd
  // read-write through /proc/self/fd (a hallocd run by a user: every
  // client); nor for one of that uid's containers' (privileged in a user
  // namespace that maps the uid: CAP_FOWNER over the inode there).
  bool CanEnforceFor(CpuAccess access, const Holder& holder) const override {
    return CanEnforce(access) && (access == CpuAccess::kReadWrite || owner_ == 0 ||
                                  (holder.uid != owner_ && !holder.maps_hallocd_uid));
  }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override;
  bool CanLimitAttach() const override { return !UdmabufPossible(); }
  // A read-only open file description binds whoever holds it to read
  // alone, and nothing else of a holder's is in it. (Holders sharing one
  // share its file offset and status flags too: read(2) and lseek(2) move
  // the others' offset; mmap and pread, which libhalloc uses, take none.)
  bool SharesReadViews() const override { return true; }
  absl::Status CheckView(const ViewRights& rights) const override;
  // A memfd's last fd or mapping is observable. (Where udmabuf exists, a
  // dma-buf made from the memfd holds its pages without holding its file:
  // that memory is then followed only as far as fds and mappings go.)
  LastReference last_reference() const override { return LastReference::kWatched; }

 private:
  // Whether udmabuf is loadable, loaded or its node visible: asked at each
  // decision (a module loaded after start counts from then on).
  bool UdmabufPossible() const;

  const UdmabufSources sources_;
  const bool loadable_;  // listed for the running kernel, seen once at start
  const uid_t owner_;    // of every buffer's inode: the daemon's euid
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_MEMFD_BACKEND_H_
