#include "clients/cpp/halloc/base/rights.h"

#include <linux/dma-buf.h>
#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "kernel/uapi/halloc_heap.h"

namespace halloc {

absl::string_view CpuAccessName(CpuAccess access) {
  switch (access) {
    case CpuAccess::kNone: return "none";
    case CpuAccess::kRead: return "read";
    case CpuAccess::kReadWrite: return "read-write";
  }
  return "?";
}

CpuAccess Narrower(CpuAccess a, CpuAccess b) { return Wider(a, b) ? b : a; }

bool Wider(CpuAccess a, CpuAccess b) { return static_cast<int>(a) > static_cast<int>(b); }

v1::CpuAccess ToProto(CpuAccess access) {
  switch (access) {
    case CpuAccess::kNone: return v1::CPU_ACCESS_NONE;
    case CpuAccess::kRead: return v1::CPU_ACCESS_READ;
    case CpuAccess::kReadWrite: return v1::CPU_ACCESS_READ_WRITE;
  }
  return v1::CPU_ACCESS_UNSPECIFIED;
}

absl::StatusOr<CpuAccess> FromProto(v1::CpuAccess access) {
  switch (access) {
    case v1::CPU_ACCESS_NONE: return CpuAccess::kNone;
    case v1::CPU_ACCESS_READ: return CpuAccess::kRead;
    case v1::CPU_ACCESS_READ_WRITE: return CpuAccess::kReadWrite;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown cpu_access ", static_cast<int>(access)));
  }
}

uint32_t ToKernel(CpuAccess access) {
  switch (access) {
    case CpuAccess::kNone: return HALLOC_CPU_NONE;
    case CpuAccess::kRead: return HALLOC_CPU_READ;
    case CpuAccess::kReadWrite: return HALLOC_CPU_READ_WRITE;
  }
  return HALLOC_CPU_NONE;
}

absl::StatusOr<CpuAccess> FromKernel(uint32_t access) {
  switch (access) {
    case HALLOC_CPU_NONE: return CpuAccess::kNone;
    case HALLOC_CPU_READ: return CpuAccess::kRead;
    case HALLOC_CPU_READ_WRITE: return CpuAccess::kReadWrite;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown HALLOC_CPU_ value ", access));
  }
}

absl::StatusOr<MapFlags> ToMapFlags(CpuAccess access) {
  switch (access) {
    case CpuAccess::kRead: return MapFlags{PROT_READ, DMA_BUF_SYNC_READ};
    case CpuAccess::kReadWrite:
      return MapFlags{PROT_READ | PROT_WRITE, DMA_BUF_SYNC_RW};
    case CpuAccess::kNone: break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot map for CPU access ", CpuAccessName(access)));
}

}  // namespace halloc
