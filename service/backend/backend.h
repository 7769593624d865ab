// The backend interface: where buffer memory comes from.
//
// A backend hands out zero-filled, fixed-size shareable memory as an fd, and
// opens further fds for the same memory that carry narrower CPU rights.
// Capabilities are queried (CanEnforce), never assumed: a backend that cannot
// enforce what policy asks for refuses with FAILED_PRECONDITION rather than
// grant more. Backends are registered by name (see registry.h).
#ifndef HALLOC_SERVICE_BACKEND_BACKEND_H_
#define HALLOC_SERVICE_BACKEND_BACKEND_H_

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "clients/cpp/halloc/base/rights.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {


struct BackendRequest {
  // Bytes; a multiple of the page size, > 0.
  uint64_t size = 0;
  // Names the memory (visible in /proc/<pid>/fd and maps).
  std::string name;
  uint64_t usage = 0;
  // Drivers whose devices the client may attach this memory to (its policy
  // rule's allow-list); absent: any device. A backend may choose memory by
  // it (e.g. physically contiguous for a device that needs it).
  std::optional<std::vector<std::string>> attach_drivers;
};

// The rights one fd for a buffer carries.
struct ViewRights {
  CpuAccess cpu = CpuAccess::kReadWrite;
  // Driver names whose devices may attach the fd; absent: any device.
  std::optional<std::vector<std::string>> attach_drivers;

  // Whether these rights restrict anything.
  bool Narrows() const {
    return cpu != CpuAccess::kReadWrite || attach_drivers.has_value();
  }
};

// A pooling backend's stock (pool.h) and its hits and misses since start.
struct PoolStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t stocked_buffers = 0;
  uint64_t stocked_bytes = 0;
  uint64_t classes = 0;
  uint64_t refill_failures = 0;
  // Stocks freed because a request could not be made (memory, fds).
  uint64_t trims_for_room = 0;
  // Of the misses: made because the pool's lock stayed held (by a refill
  // thread not running) while the stock had one.
  uint64_t contended = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual absl::string_view name() const = 0;
  // Whether its fds are dma-bufs (CPU access bracketed by
  // DMA_BUF_IOCTL_SYNC); otherwise memfds (BufferInfo.fd_kind: a wrong
  // answer makes clients' Map fail or skip the bracket). Decorators
  // forward it.
  virtual bool MakesDmaBufs() const = 0;

  // Zero-filled memory of exactly `request.size` bytes, read-write.
  virtual absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) = 0;

  // Whether fds of this backend can be limited to `access`.
  virtual bool CanEnforce(CpuAccess access) const = 0;
  // Whether such an fd binds `holder` (whom hallocd hands it to):
  // CanEnforce, unless the holder can widen the fd by itself. Root holders
  // are not asked about: no policy binds root (it may ptrace hallocd).
  // Decorators must forward it.
  struct Holder {
    uid_t uid = 0;
    // One of hallocd's own uid's containers' (Identity::maps_hallocd_uid):
    // privileged there, it acts as that uid's owner on hallocd's files.
    bool maps_hallocd_uid = false;
  };
  virtual bool CanEnforceFor(CpuAccess access, const Holder& holder) const {
    return CanEnforce(access);
  }

  // Whether it can hold protected content (usage PROTECTED): memory that
  // the CPU and unprotected devices cannot read.
  virtual bool CanProtect() const { return false; }

  // Whether it can keep its buffers from being attached to devices outside
  // an allow-list (policy attach_devices). Decorators must forward it.
  virtual bool CanLimitAttach() const { return false; }

  // A new fd for the memory behind `buffer` carrying only `rights`.
  // FAILED_PRECONDITION when !CanEnforce(rights.cpu), or when
  // rights.attach_drivers is set and !CanLimitAttach().
  virtual absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                            const ViewRights& rights) = 0;

  // Whether an fd with `rights` must be a view (OpenView) rather than the
  // buffer's own fd. memfds need one only for narrower CPU rights (no device
  // can attach a memfd unless udmabuf is loaded or loadable, and then no limit holds).
  virtual bool NeedsView(const ViewRights& rights) const {
    return rights.cpu != CpuAccess::kReadWrite;
  }

  // Whether one read-only view of a buffer (OpenView with CPU READ, any
  // attach limit) may serve every read-only holder of it: such a view
  // carries nothing of one holder's (no revoke, no count, no attach list
  // of its own), so holders that share it lose no right. The allocator
  // then opens it once per buffer and keeps it (Registry::ReadView), and
  // every read-only delivery that CheckView allows sends it, where each
  // would otherwise open a file of its own in hallocd, kernel memory
  // charged to hallocd's memory cgroup for as long as the client keeps
  // the fd. Decorators must forward it and CheckView.
  virtual bool SharesReadViews() const { return false; }
  // Why OpenView would refuse a view with `rights` now (FAILED_PRECONDITION,
  // as it says), asked without opening one: before each delivery of a kept
  // view (whether the backend can enforce the rights may change while it
  // runs).
  virtual absl::Status CheckView(const ViewRights& rights) const { return absl::OkStatus(); }

  // How hallocd can learn that no fd or mapping of a released buffer is
  // left anywhere, to keep it charged to its owner until then (Registry:
  // "Released memory"). Decorators forward it and IsLastReference.
  enum class LastReference {
    kUnseen,   // it cannot: the charge goes back at Release
    kWatched,  // an event says so (memfds: LastReferenceWatch, inotify;
               // their inode has no link)
    kPolled,   // IsLastReference says so when asked (dma-bufs, whose
               // inode keeps a link: LastReferencePoll)
  };
  virtual LastReference last_reference() const { return LastReference::kUnseen; }
  // kPolled: whether `fd` (hallocd's own, the buffer's fd) is the last
  // reference to the buffer's memory: 1 yes, 0 no, -errno cannot tell.
  virtual int IsLastReference(int fd) const { return -EOPNOTSUPP; }

  // Live revoke: whether a view this backend opens can be cut off later,
  // mappings and all, in every process that holds it (the halloc module's
  // HALLOC_IOCTL_REVOKE). Decorators must forward it and the two below.
  virtual bool CanRevokeLive() const { return false; }

  // A view, as OpenView, that RevokeView can cut off by `id`.
  struct RevocableView {
    UniqueFd fd;
    uint64_t id = 0;
  };
  virtual absl::StatusOr<RevocableView> OpenRevocableView(
      const UniqueFd& buffer, const ViewRights& rights) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend ", name(), " cannot revoke a view live"));
  }
  // Cuts view `id` of `buffer` (and every view made from it) off at once.
  // NOT_FOUND when no fd of it is left anywhere (nothing to cut).
  virtual absl::Status RevokeView(const UniqueFd& buffer, uint64_t id) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend ", name(), " cannot revoke a view live"));
  }

  // Zeros for a backend without a pool.
  virtual PoolStats pool_stats() const { return {}; }
  // The most buffers (an fd each) the backend keeps stocked at once.
  virtual uint64_t max_stocked_buffers() const { return 0; }
};

// Why a backend's Create cannot open its device node `path` (errno `err`):
// PERMISSION_DENIED when the node is there but closed to hallocd (EACCES,
// EPERM: its mode, or the unit's DeviceAllow=), which --backend=auto passes
// over only when told to (BackendConfig::skip_closed_nodes);
// FAILED_PRECONDITION otherwise (the machine lacks it). `hint` ends the
// message of the latter ("is halloc_heap.ko loaded?").
inline absl::Status NodeOpenError(absl::string_view backend, absl::string_view path, int err,
                                  absl::string_view hint) {
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(absl::StrCat(
        backend, " backend: cannot open ", path, " (", std::strerror(err),
        "): it is there, but closed to hallocd (uid ", ::geteuid(),
        "); the hallocd package's udev rule (75-halloc.rules) gives it to group hallocd"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat(backend, " backend: cannot open ", path, " (", std::strerror(err), "); ", hint));
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_BACKEND_H_
