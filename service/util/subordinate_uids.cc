#include "service/util/subordinate_uids.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "glog/logging.h"
#include "service/util/trusted_path.h"

namespace halloc {

namespace {

// No more is read of a subuid file (some 30,000 lines).
constexpr size_t kMaxFileBytes = 1 << 20;
// A missing file here is no news: no user has subordinate uids.
constexpr char kDefaultPath[] = "/etc/subuid";
constexpr uint64_t kUidEnd = uint64_t{1} << 32;  // one past the last uid

// A number as current shadow-utils reads one (strtoul, base 0: decimal,
// 0x hex or 0 octal), the whole field, no sign or space (older versions
// took those too: stricter here only groups fewer uids).
bool ParseNumber(absl::string_view field, uint64_t max, uint64_t* out) {
  if (field.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(field.front()))) {
    return false;
  }
  const std::string s(field);
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 0);
  if (errno == ERANGE || end != s.c_str() + s.size() || v > max) return false;
  *out = v;
  return true;
}

}  // namespace

SubordinateUids SubordinateUids::Parse(absl::string_view text) {
  SubordinateUids out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    // owner:first:count, and whatever fields come after (older
    // shadow-utils ignores them).
    const std::vector<absl::string_view> f = absl::StrSplit(line, ':');
    uint64_t first = 0, count = 0;
    if (f.size() < 3 || f[0].empty() || !ParseNumber(f[1], UINT32_MAX, &first) ||
        !ParseNumber(f[2], UINT64_MAX, &count) || count == 0) {
      continue;
    }
    out.ranges_.push_back(Range{static_cast<uid_t>(first),
                                std::min<uint64_t>(count, kUidEnd - first), std::string(f[0])});
  }
  std::stable_sort(out.ranges_.begin(), out.ranges_.end(),
                   [](const Range& a, const Range& b) { return a.first < b.first; });
  absl::flat_hash_map<absl::string_view, uid_t> lowest;  // by owner, in first order
  for (const Range& r : out.ranges_) lowest.try_emplace(r.owner, r.first);
  for (Range& r : out.ranges_) r.owner_first = lowest[r.owner];
  uint64_t reach = 0;
  for (const Range& r : out.ranges_) {
    reach = std::max<uint64_t>(reach, uint64_t{r.first} + r.count);
    out.reach_.push_back(reach);
  }
  return out;
}

std::optional<SubordinateUids::Slice> SubordinateUids::SliceOf(uid_t uid) const {
  // Past every range starting at or below `uid`, then back through them
  // (overlapping ranges: the nearest start that holds it) while one may
  // still reach it.
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), uid,
                             [](uid_t u, const Range& r) { return u < r.first; });
  while (it != ranges_.begin()) {
    --it;
    if (reach_[static_cast<size_t>(it - ranges_.begin())] <= uid) break;
    const uint64_t offset = uint64_t{uid} - it->first;
    if (offset >= it->count) continue;
    const uint64_t start = offset / kSlice * kSlice;
    return Slice{static_cast<uid_t>(it->first + start),
                 std::min<uint64_t>(kSlice, it->count - start), &*it};
  }
  return std::nullopt;
}

SubordinateUidsFile::SubordinateUidsFile(std::string path, absl::Duration recheck)
    : path_(std::move(path)), recheck_(recheck) {}

const SubordinateUids& SubordinateUidsFile::At(absl::Time now) {
  if (version_.has_value() && now < checked_ + recheck_) return uids_;
  checked_ = now;
  Version v;
  if (struct stat st; ::stat(path_.c_str(), &st) == 0) {
    v = Version{st.st_dev,
                st.st_ino,
                int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
                int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec,
                st.st_size,
                st.st_mode,
                st.st_uid,
                st.st_gid};
  }
  if (version_.has_value() && *version_ == v) return uids_;
  version_ = v;
  Reload();
  return uids_;
}

void SubordinateUidsFile::Reload() {
  uids_ = SubordinateUids();
  std::string problem;
  absl::StatusOr<UniqueFd> fd = OpenTrusted(path_, O_RDONLY | O_NONBLOCK | O_NOCTTY);
  struct stat st;
  if (absl::IsNotFound(fd.status()) && path_ == kDefaultPath) {
    problem_.clear();  // none: nothing to say
    return;
  }
  if (!fd.ok()) {
    problem = std::string(fd.status().message());
  } else if (::fstat(fd->get(), &st) != 0) {
    problem = absl::StrCat("fstat: ", std::strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    problem = "not a regular file";
  } else if (!TrustedOwner(st.st_uid)) {
    problem = absl::StrCat("it belongs to uid ", st.st_uid);
  } else if (OthersMayWrite(fd->get(), st)) {
    problem = "users other than its owner may write it";
  } else {
    std::string text(std::min<uint64_t>(static_cast<uint64_t>(st.st_size), kMaxFileBytes), '\0');
    size_t got = 0;
    while (got < text.size()) {
      const ssize_t n = ::read(fd->get(), text.data() + got, text.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    text.resize(got);
    if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
      // Cut mid-line, maybe: the last line read is not the file's.
      const size_t last_newline = text.rfind('\n');
      text.resize(last_newline == std::string::npos ? 0 : last_newline + 1);
      LOG(WARNING)
          << "subordinate uids: read only the first " << text.size() << " bytes of "
          << absl::CHexEscape(path_) << " (" << st.st_size
          << "): the uids of the ranges past them are each rated, and charged, on their own";
    }
    uids_ = SubordinateUids::Parse(text);
  }
  if (!problem.empty() && problem != problem_) {
    LOG(WARNING) << "subordinate uids: " << absl::CHexEscape(path_) << " left unread (" << problem
                 << "): each of its uids is rated, and charged, on its own";
  }
  problem_ = std::move(problem);
}

}  // namespace halloc
