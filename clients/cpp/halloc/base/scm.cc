#include "clients/cpp/halloc/base/scm.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc {

absl::Status SendRecord(int sock, absl::string_view bytes,
                        absl::Span<const int> fds, bool nonblocking) {
  if (fds.size() > kMaxFdsPerRecord) {
    return absl::InvalidArgumentError(
        absl::StrCat("too many fds in one record: ", fds.size()));
  }
  if (bytes.size() > kMaxRecordBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("record too large: ", bytes.size(), " bytes"));
  }
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerRecord)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    const size_t fd_bytes = sizeof(int) * fds.size();
    std::memset(control, 0, sizeof(control));
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fd_bytes);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(cmsg), fds.data(), fd_bytes);
  }
  const int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    const int err = errno;
    if (err == EAGAIN) {
      return absl::ResourceExhaustedError(
          "peer's socket queue is full (it is not reading its broker socket)");
    }
    return ErrnoStatus(err, "sendmsg");
  }
  if (static_cast<size_t>(n) != bytes.size()) {
    return absl::InternalError(
        absl::StrCat("sendmsg sent ", n, " of ", bytes.size(), " bytes"));
  }
  return absl::OkStatus();
}

namespace {

// Whether `sock` has a receive timeout (SO_RCVTIMEO).
bool HasReceiveTimeout(int sock) {
  timeval tv{};
  socklen_t len = sizeof(tv);
  return ::getsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 &&
         (tv.tv_sec != 0 || tv.tv_usec != 0);
}

}  // namespace

ssize_t ReceiveMessage(int sock, absl::Span<char> into, int flags, size_t max_fds,
                       Ancillary& out) {
  max_fds = std::min(max_fds, kKernelMaxFdsPerRecord);
  iovec iov{into.data(), into.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kKernelMaxFdsPerRecord) +
                                CMSG_SPACE(sizeof(ucred))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  // Room for the credentials (which the kernel writes first) and max_fds.
  msg.msg_controllen = CMSG_SPACE(sizeof(ucred)) +
                       (max_fds > 0 ? CMSG_SPACE(sizeof(int) * max_fds) : 0);
  ssize_t n;
  for (;;) {
    n = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n >= 0 || errno != EINTR) break;
    // A wait bounded by the socket's receive timeout would start again in
    // full, and a signal every so often (a camera's frame timer) would
    // keep it from ever ending: the caller checks its own deadline.
    if (!(flags & MSG_DONTWAIT) && HasReceiveTimeout(sock)) {
      errno = EINTR;
      break;
    }
  }
  if (n < 0) return -errno;
  // Take ownership of every fd first, so that no path leaks them.
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr;
       cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET) continue;
    if (cmsg->cmsg_type == SCM_CREDENTIALS && cmsg->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
      ucred c;
      std::memcpy(&c, CMSG_DATA(cmsg), sizeof(c));
      out.creds = c;
    } else if (cmsg->cmsg_type == SCM_RIGHTS) {
      const size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        out.fds.emplace_back(fd);
      }
    }
  }
  out.bytes_cut = (msg.msg_flags & MSG_TRUNC) != 0;
  out.fds_cut = (msg.msg_flags & MSG_CTRUNC) != 0;
  out.any = msg.msg_controllen != 0;
  return n;
}

namespace {

// One record, with room for the credentials and `max_fds` fds; every fd
// that arrived is owned by the result, whatever was cut.
absl::StatusOr<RawRecord> Receive(int sock, bool nonblocking, size_t max_fds) {
  // Received into a per-thread buffer, then copied at its real size: no
  // 64 KiB allocation per record.
  thread_local std::string buffer(kMaxRecordBytes, '\0');
  Ancillary got;
  const ssize_t n = ReceiveMessage(sock, absl::MakeSpan(buffer.data(), buffer.size()),
                                   nonblocking ? MSG_DONTWAIT : 0, max_fds, got);
  // EINTR: a wait under the socket's receive timeout that a signal cut
  // short (ReceiveMessage): nothing yet either.
  if (n == -EAGAIN || n == -EINTR) return absl::ResourceExhaustedError("no record queued");
  if (n < 0) return ErrnoStatus(static_cast<int>(-n), "recvmsg");
  RawRecord raw;
  raw.record.fds = std::move(got.fds);
  raw.record.creds = got.creds;
  raw.bytes_cut = got.bytes_cut;
  raw.fds_cut = got.fds_cut;
  // The end: nothing read. An empty record (SOCK_SEQPACKET, SOCK_DGRAM)
  // still carries the sender's credentials where the socket has
  // SO_PASSCRED; a stream has no empty records, and with SO_PASSCRED the
  // kernel writes credentials at its end too.
  if (n == 0 && raw.record.fds.empty() && !raw.fds_cut) {
    int type = 0;
    socklen_t len = sizeof(type);
    if (!got.any ||
        (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM)) {
      return absl::UnavailableError("peer closed");
    }
  }
  raw.record.bytes.assign(buffer.data(), std::min<size_t>(static_cast<size_t>(n), buffer.size()));
  return raw;
}

}  // namespace

absl::StatusOr<Record> ReceiveRecord(int sock, bool nonblocking, size_t max_fds) {
  max_fds = std::min(max_fds, kMaxFdsPerRecord);
  ASSIGN_OR_RETURN(RawRecord raw, Receive(sock, nonblocking, max_fds));
  if (raw.bytes_cut || raw.fds_cut) {
    absl::Status status = absl::DataLossError(absl::StrCat(
        "record truncated (", raw.bytes_cut ? "bytes" : "fds", "); dropped it"));
    if (!raw.bytes_cut) {
      status.SetPayload(kTruncatedRecordPayload, absl::Cord(raw.record.bytes));
    }
    return status;
  }
  if (raw.record.fds.size() > max_fds) {
    // Its fds are closed here (with `raw`); its bytes say which they were,
    // as for fds the kernel cut: a waiting call fails now, not at its
    // deadline, and what the fds were is given back.
    absl::Status status = absl::DataLossError(absl::StrCat(
        "record carries ", raw.record.fds.size(), " fds; at most ", max_fds, "; dropped it"));
    status.SetPayload(kTruncatedRecordPayload, absl::Cord(raw.record.bytes));
    return status;
  }
  return std::move(raw.record);
}

absl::StatusOr<RawRecord> ReceiveRawRecord(int sock, bool nonblocking) {
  return Receive(sock, nonblocking, kKernelMaxFdsPerRecord);
}

absl::Status RefuseIncomingFds(int sock) {
  // From Linux 6.16's <asm-generic/socket.h>; Debian 12's headers predate it.
  constexpr int kSoPassRights = 83;
  const int off = 0;
  if (::setsockopt(sock, SOL_SOCKET, kSoPassRights, &off, sizeof(off)) == 0) {
    return absl::OkStatus();
  }
  if (errno == ENOPROTOOPT) {
    return absl::UnimplementedError("this kernel has no SO_PASSRIGHTS (Linux 6.16+)");
  }
  return ErrnoStatus(errno, "setsockopt(SO_PASSRIGHTS)");
}

bool AcceptsIncomingFds(int sock) {
  constexpr int kSoPassRights = 83;  // as in RefuseIncomingFds
  int on = 1;
  socklen_t len = sizeof(on);
  if (::getsockopt(sock, SOL_SOCKET, kSoPassRights, &on, &len) != 0) return true;
  return on != 0;
}

namespace {

absl::Status WaitFor(int fd, short events, int timeout_ms, absl::string_view what) {
  pollfd pfd{fd, events, 0};
  // A poll a signal cuts short waits only what is left of `timeout_ms`
  // (by the monotonic clock, within [0, timeout_ms]): a signal every so
  // often would otherwise keep it from ever ending.
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  int n;
  int wait_ms = timeout_ms;
  for (;;) {
    n = ::poll(&pfd, 1, wait_ms);
    if (n >= 0 || errno != EINTR) break;
    if (timeout_ms >= 0) {
      const int64_t spent =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
      wait_ms = static_cast<int>(std::clamp<int64_t>(timeout_ms - spent, 0, timeout_ms));
    }
  }
  if (n < 0) return ErrnoStatus(errno, "poll");
  if (n == 0) {
    return absl::DeadlineExceededError(absl::StrCat(what, " after ", timeout_ms, " ms"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WaitReadable(int fd, int timeout_ms) {
  return WaitFor(fd, POLLIN, timeout_ms, "nothing to read");
}

absl::Status WaitWritable(int fd, int timeout_ms) {
  return WaitFor(fd, POLLOUT, timeout_ms, "no room to write");
}

}  // namespace halloc
