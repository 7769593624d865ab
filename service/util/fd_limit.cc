#include "service/util/fd_limit.h"

#include <sys/resource.h>

namespace halloc {

uint64_t FdLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return 0;
  return lim.rlim_cur;
}

}  // namespace halloc
