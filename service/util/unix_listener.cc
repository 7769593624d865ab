#include "service/util/unix_listener.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "service/util/trusted_path.h"

namespace halloc {

namespace {

// `path`'s directory, opened and held: reached through no directory or
// link another user could swap (OpenTrusted), so that the path clients
// connect by leads where hallocd bound for as long as it serves.
struct Place {
  UniqueFd dir;
  std::string name;
  // `name` reached through `dir` (/proc/self/fd/N/name): for bind and
  // connect, which take paths, not directory fds.
  std::string via_dir;
};

absl::StatusOr<Place> Open(const std::string& path) {
  RETURN_IF_ERROR(UnixAddress(path).status());  // what clients connect to must fit
  const size_t slash = path.rfind('/');
  Place p;
  p.name = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (p.name.empty() || p.name == "." || p.name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("no file name in socket path ", path));
  }
  absl::StatusOr<UniqueFd> opened = OpenTrusted(dir, O_PATH | O_DIRECTORY);
  if (!opened.ok()) {
    return Prefixed(opened.status(), absl::StrCat("socket directory of ", path));
  }
  p.dir = *std::move(opened);
  p.via_dir = absl::StrCat("/proc/self/fd/", p.dir.get(), "/", p.name);
  return p;
}

// Whether only this process's user (or root) can change `p.dir`'s entries.
absl::Status CheckOwnedDir(const Place& p, const std::string& path) {
  struct stat st;
  if (::fstat(p.dir.get(), &st) != 0) return ErrnoStatus(errno, "fstat");
  if (!TrustedOwner(st.st_uid)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the directory of ", path, " belongs to uid ", st.st_uid,
        ", who could swap hallocd's socket there for another file: use a directory of "
        "hallocd's user or root"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the directory of ", path, " is writable by other users (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777), ") without the sticky bit: "
        "they could swap hallocd's socket there for another file"));
  }
  return absl::OkStatus();
}

absl::Status RemoveStale(const Place& p, const std::string& path) {
  struct stat st;
  if (::fstatat(p.dir.get(), p.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return absl::OkStatus();
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(absl::StrCat(path, " exists and is not a socket"));
  }
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(p.via_dir));
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    UniqueFd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!probe) return ErrnoStatus(errno, "socket");
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      return absl::AlreadyExistsError(absl::StrCat("a server is already listening on ", path));
    }
  }
  if (::unlinkat(p.dir.get(), p.name.c_str(), 0) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("unlink(", path, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

void SocketFile::Remove() {
  if (!dir_) return;
  struct stat st;
  if (::fstatat(dir_.get(), name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISSOCK(st.st_mode) && st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlinkat(dir_.get(), name_.c_str(), 0);
  }
  dir_.reset();
}

absl::Status RemoveStaleSocket(const std::string& path) {
  ASSIGN_OR_RETURN(Place p, Open(path));
  return RemoveStale(p, path);
}

absl::StatusOr<BoundSocket> BindUnixSocket(const std::string& path, int type, mode_t mode) {
  ASSIGN_OR_RETURN(Place p, Open(path));
  RETURN_IF_ERROR(CheckOwnedDir(p, path));
  RETURN_IF_ERROR(RemoveStale(p, path));
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(p.via_dir));
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("bind(", path, ")"));
  }
  // Until listen() nobody can connect, whatever the mode is meanwhile.
  struct stat st;
  if (::fstatat(p.dir.get(), p.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISSOCK(st.st_mode)) {
    return absl::InternalError(absl::StrCat(path, " is not the socket just bound"));
  }
  if (::fchmodat(p.dir.get(), p.name.c_str(), mode, 0) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod(", path, ")"));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    return ErrnoStatus(errno, absl::StrCat("listen(", path, ")"));
  }
  BoundSocket bound;
  bound.fd = std::move(fd);
  bound.file = SocketFile(std::move(p.dir), std::move(p.name), path, st.st_dev, st.st_ino);
  return bound;
}

namespace {

UniqueFd OpenSpare() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

}  // namespace

absl::StatusOr<AcceptGuard> AcceptGuard::Create() {
  UniqueFd spare = OpenSpare();
  if (!spare) return ErrnoStatus(errno, "open(/dev/null)");
  return AcceptGuard(std::move(spare));
}

bool AcceptGuard::OnAcceptError(int listener, int err, absl::Time now, UniqueFd* taken) {
  if (err != EMFILE && err != ENFILE) return false;
  spare_.reset();
  {
    UniqueFd drop(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (taken != nullptr) *taken = std::move(drop);
  }
  spare_ = OpenSpare();  // when `taken` holds the slot, once the pause ends
  Pause(now);
  return true;
}

bool AcceptGuard::Paused(absl::Time now) {
  if (now < resume_at_) return true;
  if (!spare_) spare_ = OpenSpare();
  return false;
}

}  // namespace halloc
