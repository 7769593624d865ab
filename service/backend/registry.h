// The backend registry: every backend this build knows, by name, in probe
// order (the halloc kernel heaps first, then upstream dma-heaps, udmabuf,
// memfd last), and the heaps they
// serve. hallocd picks one at start (--backend, "auto" probes).
#ifndef HALLOC_SERVICE_BACKEND_REGISTRY_H_
#define HALLOC_SERVICE_BACKEND_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/backend/backend.h"
#include "service/backend/pool.h"

namespace halloc {

// Names of the backends this build knows, in probe order.
std::vector<std::string> KnownBackends();
// Names of the heaps they serve (Backend::name(); what policy `heaps`
// lists): "memfd-pool" is a backend serving heap "memfd".
std::vector<std::string> KnownHeaps();
// The heap backend `backend` serves; "" for an unknown name.
std::string HeapOfBackend(absl::string_view backend);

// What some backends are told besides their name (hallocd flags).
struct BackendConfig {
  // dmaheap: the heap under /dev/dma_heap (--dma_heap); empty: the first
  // present of kPreferredHeaps (dmaheap_backend.h: general-purpose heaps
  // only).
  std::string dma_heap;
  // "auto": whether a backend whose device node is there but closed to
  // hallocd (PERMISSION_DENIED: NodeOpenError in backend.h) is passed over
  // like one the machine lacks. A hallocd of one user's skips the system's
  // nodes; the system unit's (--skip_closed_nodes=false) stops instead: the
  // node is a setup mistake (its mode, DeviceAllow=) that would leave it on
  // a backend enforcing less.
  bool skip_closed_nodes = true;
  // memfd-pool: PoolOptions::max_bytes (--pool_max_bytes; 0: no stock)
  // and idle_timeout (--pool_idle_timeout).
  uint64_t pool_max_bytes = PoolOptions().max_bytes;
  absl::Duration pool_idle_timeout = PoolOptions().idle_timeout;
  // memfd, memfd-pool: hand read-only views to hallocd's own uid (and its
  // namespaces) as to any other uid, though they can widen them
  // (--read_only_for_own_uid): where that uid is no boundary anyway (a
  // test's in-process daemon, a user's own).
  bool read_only_for_own_uid = false;
};

// Creates the backend called `name`, or the first one in probe order that
// works on this machine when `name` is "auto" (halloc, dmaheap, udmabuf,
// memfd; each probe opens only its own nodes and closes them when it
// fails). NOT_FOUND for an unknown name; FAILED_PRECONDITION when the named
// backend cannot run here; PERMISSION_DENIED when its node is closed to
// hallocd (for "auto", unless config.skip_closed_nodes).
// `skipped` (may be null): for "auto", each backend passed over and why
// ("halloc: ... cannot open /dev/halloc (Permission denied) ..."), for the
// log: a node that is there but closed to hallocd (DeviceAllow=, a mode)
// otherwise left it on memfd, which enforces less, without a word.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view name,
                                                       const BackendConfig& config = {},
                                                       std::vector<std::string>* skipped = nullptr);

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_REGISTRY_H_
