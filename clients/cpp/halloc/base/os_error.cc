#include "clients/cpp/halloc/base/os_error.h"

#include <sched.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace halloc {
namespace {

absl::StatusCode CodeFor(int err) {
  switch (err) {
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case ENOSPC:
    case EAGAIN:
    case ETOOMANYREFS:
    case EFBIG:
      return absl::StatusCode::kResourceExhausted;
    case EINVAL:
    case E2BIG:
    case EOVERFLOW:
    case EBADF:
      return absl::StatusCode::kInvalidArgument;
    case EPERM:
    case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return absl::StatusCode::kNotFound;
    case ENOTTY:
    case EOPNOTSUPP:
    case ENOSYS:
      return absl::StatusCode::kUnimplemented;
    case EPIPE:
    case ECONNRESET:
    case ECONNREFUSED:
      return absl::StatusCode::kUnavailable;
    case ETIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view what) {
  char buf[128];
  // GNU strerror_r returns the message (possibly not in buf).
  const char* msg = strerror_r(err, buf, sizeof(buf));
  return absl::Status(CodeFor(err), absl::StrCat(what, ": ", msg));
}

absl::Status OwnErrnoStatus(int err, absl::string_view what) {
  absl::Status s = ErrnoStatus(err, what);
  if (absl::IsResourceExhausted(s)) return s;
  return absl::InternalError(s.message());
}

absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  if (s.ok()) return s;
  absl::Status out(s.code(), absl::StrCat(prefix, ": ", s.message()));
  s.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

absl::StatusCode StatusCodeFromWire(int64_t code) {
  const bool known = code >= static_cast<int>(absl::StatusCode::kOk) &&
                     code <= static_cast<int>(absl::StatusCode::kUnauthenticated);
  return known ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
}

int RetryIoctlWith(int (*call)(int fd, unsigned long request, void* arg), int fd,
                   unsigned long request, void* arg) {
  int again = 0;
  for (;;) {
    const int r = call(fd, request, arg);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno != EAGAIN || ++again >= kIoctlAgainTries) return r;
    ::sched_yield();
  }
}

int RetryIoctl(int fd, unsigned long request, void* arg) {
  return RetryIoctlWith([](int f, unsigned long req, void* a) { return ::ioctl(f, req, a); }, fd,
                        request, arg);
}

}  // namespace halloc
