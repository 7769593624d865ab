// Tests' way to see whether this process installed and closed an fd of a
// file: close() of any fd of a file drops the process's POSIX locks on it,
// while the kernel dropping an fd it never installed does not (a close also
// runs the file's flush, which a FUSE file's server controls).
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_LOCK_PROBE_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_LOCK_PROBE_H_

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

namespace halloc {

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

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_LOCK_PROBE_H_
