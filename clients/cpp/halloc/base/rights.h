// CPU access rights, and the one mapping between each vocabulary that
// spells them: the daemon's CpuAccess, the API's halloc.v1.CpuAccess, the
// kernel module's HALLOC_CPU_*, and libhalloc's Access (what a Map asks).
// Every conversion is here and tested both ways (rights_test.cc); an
// unknown value is refused, never read as some right.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_RIGHTS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_RIGHTS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "halloc/v1/types.pb.h"

namespace halloc {

// Ordered: a larger value is a wider right.
enum class CpuAccess { kNone = 1, kRead = 2, kReadWrite = 3 };

// "none", "read", "read-write".
absl::string_view CpuAccessName(CpuAccess access);

// The narrower of two rights, and whether `a` is wider than `b`.
CpuAccess Narrower(CpuAccess a, CpuAccess b);
bool Wider(CpuAccess a, CpuAccess b);

// halloc.v1.CpuAccess. FromProto refuses UNSPECIFIED and unknown values
// (INVALID_ARGUMENT); callers that give UNSPECIFIED a meaning handle it
// first.
v1::CpuAccess ToProto(CpuAccess access);
absl::StatusOr<CpuAccess> FromProto(v1::CpuAccess access);

// HALLOC_CPU_* of kernel/uapi/halloc_heap.h.
uint32_t ToKernel(CpuAccess access);
absl::StatusOr<CpuAccess> FromKernel(uint32_t access);

// What a CPU mapping with `access` asks of the fd (libhalloc's
// Buffer::Map): mmap's PROT_* and the DMA_BUF_SYNC_* direction of its
// CPU-access bracket. kNone maps nothing: INVALID_ARGUMENT.
struct MapFlags {
  int prot = 0;
  uint64_t sync = 0;
};
absl::StatusOr<MapFlags> ToMapFlags(CpuAccess access);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_RIGHTS_H_
