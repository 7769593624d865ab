#include "service/util/id_map.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {
namespace {

constexpr size_t kMaxExtents = 340;
// 340 lines of three 10-digit fields, blanks and a newline: 11,220 bytes.
constexpr size_t kMaxText = 16384;

// A field as the kernel prints it: decimal digits only (SimpleAtoi would
// take a sign and surrounding blanks).
bool Field(absl::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 10) return false;
  for (const char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v > 0xffffffffu) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

}  // namespace

absl::StatusOr<IdMap> IdMap::Parse(absl::string_view text) {
  IdMap map;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    Extent e;
    if (f.size() != 3 || !Field(f[0], &e.inside) || !Field(f[1], &e.outside) ||
        !Field(f[2], &e.count) || e.count == 0 ||
        uint64_t{e.inside} + e.count > uint64_t{1} << 32) {
      return absl::InvalidArgumentError(
          absl::StrCat("id map line ", line_no, " is not \"inside outside count\""));
    }
    if (map.extents_.size() == kMaxExtents) {
      return absl::InvalidArgumentError(absl::StrCat("id map has over ", kMaxExtents, " extents"));
    }
    map.extents_.push_back(e);
  }
  return map;
}

std::optional<uid_t> IdMap::ToOutside(uid_t inside) const {
  for (const Extent& e : extents_) {
    if (inside < e.inside || uint64_t{inside} - e.inside >= e.count) continue;
    // An extent whose outside uids the reader cannot name shows only the
    // first as unnamed; none of them is a uid of the reader's.
    const uint64_t outside = uint64_t{e.outside} + (inside - e.inside);
    if (e.outside == kUnnamed || outside >= kUnnamed) return std::nullopt;
    return static_cast<uid_t>(outside);
  }
  return std::nullopt;
}

absl::StatusOr<IdMap> ReadUidMap(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/uid_map");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) {
      return absl::NotFoundError(absl::StrCat("no process ", pid));
    }
    return ErrnoStatus(err, path);
  }
  std::string text(kMaxText, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      if (err == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
      return ErrnoStatus(err, path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got == text.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is over ", kMaxText, " bytes"));
  }
  text.resize(got);
  return IdMap::Parse(text);
}

}  // namespace halloc
