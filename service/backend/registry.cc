#include "service/backend/registry.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/backend/dmaheap_backend.h"
#include "service/backend/halloc_backend.h"
#include "service/backend/memfd_backend.h"
#include "service/backend/pool.h"
#include "service/backend/udmabuf_backend.h"
#include "service/util/cpu_follower.h"

namespace halloc {
namespace {

using Created = absl::StatusOr<std::unique_ptr<Backend>>;

struct BackendEntry {
  const char* name;
  // The heap its buffers come from (what Backend::name() says and policy
  // rules name): a wrapper such as the pool serves another backend's heap.
  const char* heap;
  // nullptr when the backend is not built yet. FAILED_PRECONDITION when it
  // cannot run on this machine (then "auto" tries the next one).
  Created (*create)(const BackendConfig& config);
};

Created NewHalloc(const BackendConfig& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<HallocBackend> b,
                   HallocBackend::Create({}, config.skip_closed_nodes));
  return std::unique_ptr<Backend>(std::move(b));
}

Created NewDmaHeap(const BackendConfig& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<DmaHeapBackend> b,
                   DmaHeapBackend::Create({"/dev/dma_heap", config.dma_heap}));
  return std::unique_ptr<Backend>(std::move(b));
}

Created NewUdmabuf(const BackendConfig&) {
  ASSIGN_OR_RETURN(std::unique_ptr<UdmabufBackend> b, UdmabufBackend::Create());
  return std::unique_ptr<Backend>(std::move(b));
}

// Whose read-only views a memfd does not bind (MemfdBackend::owner):
// hallocd's own uid, unless told to bind it as any other (0: none).
std::unique_ptr<MemfdBackend> Memfd(const BackendConfig& config) {
  return std::make_unique<MemfdBackend>(UdmabufSources::ThisKernel(),
                                        config.read_only_for_own_uid ? 0 : ::geteuid());
}

Created NewMemfd(const BackendConfig& config) { return std::unique_ptr<Backend>(Memfd(config)); }

// memfd behind a pool of pre-created, committed buffers (pool.h): the
// default PoolOptions but the operator's bounds; refills keep off the CPU
// the broker serves from.
Created NewPooledMemfd(const BackendConfig& config) {
  PoolOptions options;
  options.max_bytes = config.pool_max_bytes;
  options.class_bytes = std::min(options.class_bytes, options.max_bytes);
  options.idle_timeout = config.pool_idle_timeout;
  options.serving_cpu = &ServingCpu();
  ASSIGN_OR_RETURN(std::unique_ptr<PooledBackend> b, PooledBackend::Create(Memfd(config), options));
  return std::unique_ptr<Backend>(std::move(b));
}

// Probe order (design.md): the halloc kernel heaps first (every right
// enforced), then real dma-bufs without per-fd rights from an upstream heap
// or udmabuf, memfd last. Entries without a factory are known names this
// build cannot create yet. Entries after "memfd" (which always works) are
// never chosen by "auto", only by name.
constexpr BackendEntry kBackends[] = {
    {"halloc", "halloc", &NewHalloc},
    {"dmaheap", "dmaheap", &NewDmaHeap},
    {"udmabuf", "udmabuf", &NewUdmabuf},
    {"memfd", "memfd", &NewMemfd},
    {"memfd-pool", "memfd", &NewPooledMemfd},
};

}  // namespace

std::vector<std::string> KnownHeaps() {
  std::vector<std::string> heaps;
  for (const BackendEntry& e : kBackends) {
    if (std::find(heaps.begin(), heaps.end(), e.heap) == heaps.end()) heaps.push_back(e.heap);
  }
  return heaps;
}

std::string HeapOfBackend(absl::string_view backend) {
  for (const BackendEntry& e : kBackends) {
    if (backend == e.name) return e.heap;
  }
  return "";
}

std::vector<std::string> KnownBackends() {
  std::vector<std::string> names;
  for (const BackendEntry& e : kBackends) names.push_back(e.name);
  return names;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view name,
                                                       const BackendConfig& config,
                                                       std::vector<std::string>* skipped) {
  for (const BackendEntry& e : kBackends) {
    if (name != "auto" && name != e.name) continue;
    if (e.create != nullptr) {
      Created b = e.create(config);
      // "auto" moves on from a backend this machine cannot run (or may not
      // open, when told to).
      if (name == "auto" && (absl::IsFailedPrecondition(b.status()) ||
                             (config.skip_closed_nodes && absl::IsPermissionDenied(b.status())))) {
        if (skipped != nullptr)
          skipped->push_back(absl::StrCat(e.name, ": ", b.status().message()));
        continue;
      }
      return b;
    }
    if (name != "auto") {
      return absl::FailedPreconditionError(absl::StrCat(
          "backend '", name, "' is not available in this build"));
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "unknown backend '", name, "'; known: auto, ",
      absl::StrJoin(KnownBackends(), ", ")));
}

}  // namespace halloc
