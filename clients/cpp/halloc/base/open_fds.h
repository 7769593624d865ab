// What a test checks to show that nothing leaked an fd: how many fds this
// process has open, and whether any of them is on a given file.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_OPEN_FDS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_OPEN_FDS_H_

#include <sys/stat.h>

#include <filesystem>
#include <system_error>

namespace halloc::testing {

// The fds open in this process (those in /proc/self/fd, less the one
// listing it).
inline int CountOpenFds() {
  int n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++n;
  }
  return n - 1;
}

// Whether any fd of this process is open on the file `st` describes.
inline bool OpenOn(const struct stat& st) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    struct stat other;
    if (::stat(e.path().c_str(), &other) == 0 && other.st_dev == st.st_dev &&
        other.st_ino == st.st_ino) {
      return true;
    }
  }
  return false;
}

}  // namespace halloc::testing

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_OPEN_FDS_H_
