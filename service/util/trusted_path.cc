#include "service/util/trusted_path.h"

#include <endian.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc {
namespace {

constexpr int kMaxLinks = 40;

// The walk so far, for messages (escaped: a path may hold anything).
class Walked {
 public:
  std::string Path() const {
    return absl::CHexEscape(absl::StrCat("/", absl::StrJoin(names_, "/")));
  }
  // The walk so far and then `name`.
  std::string With(const std::string& name) const {
    Walked next = *this;
    next.names_.push_back(name);
    return next.Path();
  }
  void Enter(const std::string& name) {
    if (name == "..") {
      if (!names_.empty()) names_.pop_back();
    } else if (name != ".") {
      names_.push_back(name);
    }
  }
  void Root() { names_.clear(); }

 private:
  std::vector<std::string> names_;
};

void PushFront(std::deque<std::string>& todo, const std::string& path) {
  std::vector<std::string> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_front(*it);
}

// FUSE: a file system whose owners and modes are whatever its server says.
// A user's, mounted with allow_other (/etc/fuse.conf user_allow_other), can
// say root owns a directory its user swaps at will. No way to tell whose
// server answers, so no FUSE mount is trusted, root's neither.
absl::Status NotOnFuse(int fd, const std::string& what) {
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0) return ErrnoStatus(errno, absl::StrCat("statfs(", what, ")"));
  if (fs.f_type == FUSE_SUPER_MAGIC) {
    return absl::FailedPreconditionError(
        absl::StrCat(what,
                     " is on a FUSE file system, whose owners and modes are what its server says "
                     "(a user's could say root's): hallocd trusts no path through one"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {
std::atomic<int64_t> own_uid_override{-1};
}  // namespace

bool TrustedOwner(uid_t uid) {
  const int64_t own = own_uid_override.load(std::memory_order_relaxed);
  return uid == 0 || uid == (own >= 0 ? static_cast<uid_t>(own) : ::geteuid());
}

void TrustOwnUidAs(int64_t uid) { own_uid_override.store(uid, std::memory_order_relaxed); }

namespace {

// Whether `fd`'s access ACL lets a user or group but root's (or this
// process's user) write: a named entry with write (the mask, the mode's
// group bits, bounds it: the caller asks only where it allows writing).
bool AclLetsOthersWrite(int fd) {
  // fgetxattr refuses O_PATH fds; the path of the fd itself does not.
  const std::string path = absl::StrCat("/proc/self/fd/", fd);
  constexpr const char* kAcl = "system.posix_acl_access";
  ssize_t n = ::getxattr(path.c_str(), kAcl, nullptr, 0);
  if (n < 0) return errno != ENODATA && errno != EOPNOTSUPP;  // none: the mode says it all
  std::vector<char> acl(static_cast<size_t>(n));
  n = ::getxattr(path.c_str(), kAcl, acl.data(), acl.size());
  posix_acl_xattr_header header;
  if (n < static_cast<ssize_t>(sizeof(header))) return true;
  std::memcpy(&header, acl.data(), sizeof(header));
  if (le32toh(header.a_version) != POSIX_ACL_XATTR_VERSION) return true;
  for (size_t at = sizeof(header); at + sizeof(posix_acl_xattr_entry) <= static_cast<size_t>(n);
       at += sizeof(posix_acl_xattr_entry)) {
    posix_acl_xattr_entry e;
    std::memcpy(&e, acl.data() + at, sizeof(e));
    if ((le16toh(e.e_perm) & ACL_WRITE) == 0) continue;
    const uint32_t id = le32toh(e.e_id);
    if (le16toh(e.e_tag) == ACL_USER && !TrustedOwner(id)) return true;
    if (le16toh(e.e_tag) == ACL_GROUP && id != 0) return true;
  }
  return false;
}

}  // namespace

bool OthersMayWrite(int fd, const struct stat& st) {
  if ((st.st_mode & S_IWOTH) != 0) return true;
  if ((st.st_mode & S_IWGRP) == 0) return false;
  // Group root's members are root's to choose; the users and groups an
  // ACL names are not.
  return st.st_gid != 0 || AclLetsOthersWrite(fd);
}

absl::StatusOr<UniqueFd> OpenTrusted(const std::string& path, int flags) {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  std::string full = path;
  if (path[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof(cwd)) == nullptr) return ErrnoStatus(errno, "getcwd");
    full = absl::StrCat(cwd, "/", path);
  }
  std::deque<std::string> todo;
  PushFront(todo, full);
  if (todo.empty()) todo.push_back(".");  // "/" itself
  UniqueFd cur(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!cur) return ErrnoStatus(errno, "open(/)");
  Walked walked;
  int links = 0;
  while (!todo.empty()) {
    const std::string name = std::move(todo.front());
    todo.pop_front();
    const bool last = todo.empty();
    const int open_flags = (last ? flags : O_PATH | O_DIRECTORY) | O_NOFOLLOW | O_CLOEXEC;
    if (name == "." || name == "..") {
      // Into the directory itself or one already walked on the way here.
      UniqueFd next(::openat(cur.get(), name.c_str(), open_flags));
      if (!next) return ErrnoStatus(errno, absl::StrCat("open(", walked.With(name), ")"));
      if (last) {
        RETURN_IF_ERROR(NotOnFuse(next.get(), walked.With(name)));
        return next;
      }
      cur = std::move(next);
      walked.Enter(name);
      continue;
    }
    RETURN_IF_ERROR(NotOnFuse(cur.get(), walked.Path()));
    struct stat dir;
    if (::fstat(cur.get(), &dir) != 0) return ErrnoStatus(errno, "fstat");
    if (!TrustedOwner(dir.st_uid)) {
      return absl::FailedPreconditionError(absl::StrCat(
          walked.Path(), " belongs to uid ", dir.st_uid, ", who could swap ",
          walked.With(name), " for another file"));
    }
    struct stat st;
    if (::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int e = errno;
      if (e == ENOENT) return absl::NotFoundError(absl::StrCat(walked.With(name), " does not exist"));
      return ErrnoStatus(e, absl::StrCat("stat(", walked.With(name), ")"));
    }
    if (OthersMayWrite(cur.get(), dir)) {
      if ((dir.st_mode & S_ISVTX) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            walked.Path(), " is writable by other users without the sticky bit: they could swap ",
            walked.With(name), " for another file"));
      }
      if (!TrustedOwner(st.st_uid)) {
        return absl::FailedPreconditionError(absl::StrCat(
            walked.With(name), " belongs to uid ", st.st_uid, " in ", walked.Path(),
            ", a directory others may write to: it could be swapped for another file"));
      }
    }
    if (S_ISLNK(st.st_mode)) {
      if (++links > kMaxLinks) {
        return ErrnoStatus(ELOOP, absl::StrCat("following ", absl::CHexEscape(path)));
      }
      std::string target(PATH_MAX, '\0');
      const ssize_t n = ::readlinkat(cur.get(), name.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoStatus(errno, absl::StrCat("readlink(", walked.With(name), ")"));
      target.resize(static_cast<size_t>(n));
      if (!target.empty() && target[0] == '/') {
        cur.reset(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!cur) return ErrnoStatus(errno, "open(/)");
        walked.Root();
      }
      PushFront(todo, target);
      if (todo.empty()) todo.push_back(".");  // a link to "/" ended the path
      continue;
    }
    if (!last && !S_ISDIR(st.st_mode)) {
      return ErrnoStatus(ENOTDIR, absl::StrCat("open(", walked.With(name), ")"));
    }
    UniqueFd next(::openat(cur.get(), name.c_str(), open_flags));
    if (!next) return ErrnoStatus(errno, absl::StrCat("open(", walked.With(name), ")"));
    // What was opened is what was judged (nobody else could have swapped
    // it; this process could have).
    struct stat got;
    if (::fstat(next.get(), &got) != 0) return ErrnoStatus(errno, "fstat");
    if (got.st_dev != st.st_dev || got.st_ino != st.st_ino) {
      return absl::AbortedError(absl::StrCat(walked.With(name), " changed while it was opened"));
    }
    if (last) {
      RETURN_IF_ERROR(NotOnFuse(next.get(), walked.With(name)));
      return next;
    }
    cur = std::move(next);
    walked.Enter(name);
  }
  return absl::InternalError("unreachable");
}

}  // namespace halloc
