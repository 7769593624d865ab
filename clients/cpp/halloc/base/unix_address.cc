#include "clients/cpp/halloc/base/unix_address.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc {

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path '", path, "' is empty or longer than ",
        sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type, absl::Duration timeout,
                                     absl::string_view what) {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket");
  // A Unix socket's connect waits for room in a full backlog for as long
  // as the send timeout says (for ever by default), then fails EAGAIN.
  const bool bounded = timeout < absl::InfiniteDuration();
  const auto send_timeout = [&](absl::Duration d) {
    const timeval tv = absl::ToTimeval(d);
    return ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0;
  };
  // (A zero timeout would mean none: at least 1 ms.)
  if (bounded && !send_timeout(std::max(timeout, absl::Milliseconds(1)))) {
    return ErrnoStatus(errno, "setsockopt(SO_SNDTIMEO)");
  }
  // With a send timeout the kernel does not restart a connect a signal
  // handler interrupted (EINTR): it goes again with the time left.
  const absl::Time deadline = absl::Now() + timeout;
  int r;
  for (;;) {
    r = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    if (r == 0 || errno != EINTR) break;
    if (bounded) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) break;  // EINTR: as a timeout
      if (!send_timeout(std::max(left, absl::Milliseconds(1)))) {
        return ErrnoStatus(errno, "setsockopt(SO_SNDTIMEO)");
      }
    }
  }
  if (r != 0 && bounded && (errno == EAGAIN || errno == EINTR)) {
    return absl::DeadlineExceededError(
        absl::StrCat("connect to ", what, " at ", path, ": no room in its backlog within ",
                     absl::FormatDuration(timeout), " (hallocd is not accepting connections)"));
  }
  if (r != 0) {
    return ErrnoStatus(errno,
                       absl::StrCat("connect to ", what, " at ", path, " (is hallocd running?)"));
  }
  if (bounded && !send_timeout(absl::ZeroDuration())) {
    return ErrnoStatus(errno, "setsockopt(SO_SNDTIMEO)");
  }
  return fd;
}

}  // namespace halloc
