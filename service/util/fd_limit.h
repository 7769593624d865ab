// This process's fd limit, which hallocd shares out between connections,
// buffers and fds sent but not yet read (connection_limits.h,
// unread_fds.h, Policy::DefaultBufferQuota).
#ifndef HALLOC_SERVICE_UTIL_FD_LIMIT_H_
#define HALLOC_SERVICE_UTIL_FD_LIMIT_H_

#include <cstdint>

namespace halloc {

// RLIMIT_NOFILE, soft; 0 when infinite (or unreadable).
uint64_t FdLimit();

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_FD_LIMIT_H_
