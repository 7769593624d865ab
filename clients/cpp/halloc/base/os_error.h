// One way to turn an errno into an absl::Status ("what we did: strerror"),
// and one way to say where a status came from.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_OS_ERROR_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_OS_ERROR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace halloc {

// Maps `err` to the status code a caller should act on (see
// proto/halloc/v1/allocator.proto): ENOMEM/EMFILE/ENFILE/ENOSPC/EAGAIN/
// ETOOMANYREFS/EFBIG → RESOURCE_EXHAUSTED, EINVAL/E2BIG/EOVERFLOW/EBADF →
// INVALID_ARGUMENT, EPERM/EACCES → PERMISSION_DENIED, ENOENT/ENODEV/ENXIO →
// NOT_FOUND, ENOTTY/EOPNOTSUPP/ENOSYS → UNIMPLEMENTED, EPIPE/ECONNRESET/
// ECONNREFUSED → UNAVAILABLE, ETIMEDOUT → DEADLINE_EXCEEDED, anything else
// → INTERNAL. The message is "<what>: <strerror(err)>".
absl::Status ErrnoStatus(int err, absl::string_view what);

// The same for a call hallocd makes on its own resources (reopening its own
// memfd, sealing it, wrapping it in a dma-buf), whose failure is no fault
// of the caller's: RESOURCE_EXHAUSTED where ErrnoStatus says so (hallocd
// ran out of memory or fds), INTERNAL otherwise (never PERMISSION_DENIED,
// NOT_FOUND or INVALID_ARGUMENT, which a caller would act on).
absl::Status OwnErrnoStatus(int err, absl::string_view what);

// `s` with "<prefix>: " before its message, its code and payloads kept
// (absl::Status(s.code(), ...) drops the payloads); OK stays OK.
absl::Status Prefixed(const absl::Status& s, absl::string_view prefix);

// A status code as a peer sent it on the wire (BrokerReply.code,
// IsSupportedResponse.code): itself when it is one of absl's (0..16), else
// UNKNOWN, so that no caller switches on a code absl does not define.
absl::StatusCode StatusCodeFromWire(int64_t code);

// ioctl(2), retried while it fails with EINTR (a signal interrupted it),
// and with EAGAIN (a lock did) up to kIoctlAgainTries times, yielding the
// CPU between: its result, errno set on -1. A driver (or a file
// pretending to be one) that answers EAGAIN for ever no longer keeps its
// caller spinning: past the tries, -1 with errno EAGAIN.
inline constexpr int kIoctlAgainTries = 100;
int RetryIoctl(int fd, unsigned long request, void* arg);
// The same with `call` in place of ioctl(2) (for tests).
int RetryIoctlWith(int (*call)(int fd, unsigned long request, void* arg), int fd,
                   unsigned long request, void* arg);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_OS_ERROR_H_
