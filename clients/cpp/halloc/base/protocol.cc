#include "clients/cpp/halloc/base/protocol.h"

#include <sched.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace halloc {

uint32_t CpuHint(int cpu) { return cpu >= 0 ? static_cast<uint32_t>(cpu) + 1 : 0; }

uint32_t CurrentCpuHint() { return CpuHint(::sched_getcpu()); }

std::string DefaultSocketDir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] != '\0') return absl::StrCat(xdg, "/halloc");
  return "/run/halloc";
}

std::string DefaultSocketPath(const char* file) {
  return absl::StrCat(DefaultSocketDir(), "/", file);
}

}  // namespace halloc
