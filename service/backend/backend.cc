#include "service/backend/backend.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service/backend/memfd_backend.h"
#include "service/backend/pool.h"

namespace halloc {
namespace {

struct BackendEntry {
  const char* name;
  // nullptr when the backend is not built yet.
  std::unique_ptr<Backend> (*create)();
};

std::unique_ptr<Backend> NewMemfd() { return std::make_unique<MemfdBackend>(); }

// memfd behind a pool of pre-created, committed buffers (pool.h), with the
// default PoolOptions. Creating it cannot fail with a non-null backend.
std::unique_ptr<Backend> NewPooledMemfd() {
  return *PooledBackend::Create(std::make_unique<MemfdBackend>(), PoolOptions{});
}

// Probe order (design.md): the halloc kernel heaps first, memfd last.
// Entries without a factory are known names this build cannot create yet.
// Entries after "memfd" (which always works) are never chosen by "auto",
// only by name.
constexpr BackendEntry kBackends[] = {
    {"halloc", nullptr},
    {"dmaheap", nullptr},
    {"udmabuf", nullptr},
    {"memfd", &NewMemfd},
    {"memfd-pool", &NewPooledMemfd},
};

}  // namespace

absl::string_view CpuAccessName(CpuAccess access) {
  switch (access) {
    case CpuAccess::kNone: return "none";
    case CpuAccess::kRead: return "read";
    case CpuAccess::kReadWrite: return "read-write";
  }
  return "?";
}

std::vector<std::string> KnownBackends() {
  std::vector<std::string> names;
  for (const BackendEntry& e : kBackends) names.push_back(e.name);
  return names;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view name) {
  for (const BackendEntry& e : kBackends) {
    if (name != "auto" && name != e.name) continue;
    if (e.create != nullptr) return e.create();
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
