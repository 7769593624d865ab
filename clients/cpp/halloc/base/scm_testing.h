// Tests' tools for fds passed over sockets: records sent past SendRecord's
// limits, and a way to see whether this process installed and closed an fd
// of a file (close() of any fd of a file drops the process's POSIX locks on
// it, while the kernel dropping an fd it never installed does not; a close
// also runs the file's flush, which a FUSE file's server controls).
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_TESTING_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_TESTING_H_

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// One sendmsg of `bytes` with `fds` (any number, unlike SendRecord) and
// `flags` (MSG_OOB, say): what sendmsg returned.
inline ssize_t SendRaw(int sock, absl::string_view bytes, const std::vector<int>& fds,
                       int flags = 0) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  return ::sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
}

// Whether another process sees a write lock of this process on `path`
// (F_GETLK from a child: a process never sees its own locks that way).
inline bool OthersSeeOurLock(const std::string& path) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fd < 0 || ::fcntl(fd, F_GETLK, &fl) != 0) ::_exit(2);
    ::_exit(fl.l_type == F_UNLCK ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 1;
}

// A new file under /tmp that this process holds a POSIX write lock on
// (`path` empty when that failed).
struct LockedFile {
  UniqueFd fd;
  std::string path;
};
inline LockedFile LockTempFile() {
  char tmpl[] = "/tmp/halloc-lock-XXXXXX";
  LockedFile f{UniqueFd(::mkstemp(tmpl)), ""};
  if (!f.fd) return f;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(f.fd.get(), F_SETLK, &fl) == 0) {
    f.path = tmpl;
  } else {
    ::unlink(tmpl);
  }
  return f;
}

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_TESTING_H_
