#include "service/backend/dmabuf_refs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

std::optional<uint64_t> FdinfoCount(absl::string_view fdinfo) {
  for (absl::string_view line : absl::StrSplit(fdinfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "count:")) continue;
    uint64_t count = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &count)) return count;
    return std::nullopt;
  }
  return std::nullopt;
}

namespace {

// 0 and `*count`, ENODATA when the fdinfo has no count, or the errno.
int ReadCount(int fd, uint64_t* count) {
  char path[40];
  std::snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
  UniqueFd info(::open(path, O_RDONLY | O_CLOEXEC));
  if (!info) return errno;
  // A dma-buf's fdinfo: pos, flags, mnt_id, ino, then size, count,
  // exp_name and name (at most DMA_BUF_NAME_LEN): well under 512 bytes.
  char buf[1024];
  ssize_t n;
  do {
    n = ::read(info.get(), buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  std::optional<uint64_t> found = FdinfoCount(absl::string_view(buf, n));
  if (!found.has_value()) return ENODATA;
  *count = *found;
  return 0;
}

}  // namespace

absl::StatusOr<uint64_t> DmaBufReferences(int fd) {
  uint64_t count = 0;
  const int err = ReadCount(fd, &count);
  if (err == ENODATA) {
    return absl::FailedPreconditionError(
        absl::StrCat("fdinfo of fd ", fd, " shows no reference count: not a dma-buf?"));
  }
  if (err != 0) return ErrnoStatus(err, absl::StrCat("reading fdinfo of fd ", fd));
  return count;
}

int DmaBufIsLastReference(int fd) {
  uint64_t count = 0;
  if (const int err = ReadCount(fd, &count); err != 0) return -err;
  return count <= 1 ? 1 : 0;
}

}  // namespace halloc
