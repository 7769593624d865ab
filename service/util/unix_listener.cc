#include "service/util/unix_listener.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unix_address.h"

namespace halloc {

absl::Status RemoveStaleSocket(const std::string& path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(
        absl::StrCat(path, " exists and is not a socket"));
  }
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    UniqueFd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!probe) return ErrnoStatus(errno, "socket");
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr),
                  sizeof(addr)) == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("a server is already listening on ", path));
    }
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("unlink(", path, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> BindUnixSocket(const std::string& path, int type,
                                        mode_t mode) {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  RETURN_IF_ERROR(RemoveStaleSocket(path));
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("bind(", path, ")"));
  }
  if (::chmod(path.c_str(), mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod(", path, ")"));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    return ErrnoStatus(errno, absl::StrCat("listen(", path, ")"));
  }
  return fd;
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
