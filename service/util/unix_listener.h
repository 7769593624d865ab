// The Unix socket files hallocd listens on: bound with their permissions,
// replacing a stale file that an earlier hallocd left behind, never one a
// live server still owns; and only in a directory no other user can change.
#ifndef HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_
#define HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_

#include <sys/stat.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/util/clock.h"

namespace halloc {

// A socket file hallocd bound: its directory, held open as it was checked,
// and the inode bound there. Everything done to the file afterwards goes
// through that directory, so no link changed since (in the path's
// directories, or at the file's name) can point it at another file.
class SocketFile {
 public:
  SocketFile() = default;
  // Socket `name` in `dir` (its inode `dev`, `ino`), bound at `path`: as
  // BindUnixSocket made it.
  SocketFile(UniqueFd dir, std::string name, std::string path, dev_t dev, ino_t ino)
      : dir_(std::move(dir)), name_(std::move(name)), path_(std::move(path)), dev_(dev),
        ino_(ino) {}
  SocketFile(SocketFile&&) = default;
  SocketFile& operator=(SocketFile&&) = default;

  // Unlinks the file if it is still the socket bound; then holds nothing.
  void Remove();
  const std::string& path() const { return path_; }

 private:
  UniqueFd dir_;
  std::string name_, path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

struct BoundSocket {
  UniqueFd fd;      // listening
  SocketFile file;  // where; Remove() at the end
};

// Binds and listens on a Unix socket of `type` (SOCK_STREAM, SOCK_SEQPACKET)
// at `path` with permissions `mode`, replacing a stale socket file (one
// nobody listens on). ALREADY_EXISTS when a live server owns the path or a
// file that is not a socket sits there; INVALID_ARGUMENT for a path too long
// for sockaddr_un; FAILED_PRECONDITION for a directory owned by a user
// other than this process's or root's, or one that others may write to
// without the sticky bit: anyone who can rename entries there could swap
// the socket (and so the file hallocd sets the mode of, or unlinks) for
// another.
absl::StatusOr<BoundSocket> BindUnixSocket(const std::string& path, int type, mode_t mode);

// Removes a socket file at `path` if nobody listens on it (a stream or a
// seqpacket server); OK when there is nothing at `path`.
absl::Status RemoveStaleSocket(const std::string& path);

// What an accepting thread does when its process is out of fds. accept4
// then fails (EMFILE, ENFILE) and the connection stays queued: a
// level-triggered poll reports it again at once (the thread spins) and its
// client hangs. The guard holds one spare fd: at EMFILE it frees it, takes
// the waiting connection with it and closes it (that client sees the
// connection end), and the thread stops accepting for kPause; the spare is
// opened again at once, or when the pause ends. Times are MonotonicNow()'s
// (clock.h).
//
// Not thread-safe: used by the one accepting thread.
class AcceptGuard {
 public:
  static constexpr absl::Duration kPause = absl::Milliseconds(100);

  static absl::StatusOr<AcceptGuard> Create();

  // accept4 on `listener` failed with `err`: true when accepting should
  // pause (out of fds: the waiting connection was taken and closed, or,
  // given `taken`, handed over there for the caller to close, as records
  // with fds queued on it must be: see ForeignFds).
  bool OnAcceptError(int listener, int err, absl::Time now, UniqueFd* taken = nullptr);
  // Starts a pause without an accept (a listener that could not be
  // watched again, say).
  void Pause(absl::Time now) { resume_at_ = now + kPause; }
  // Whether accepting is paused at `now`. Once it is not, the spare is held
  // again (where it can be opened).
  bool Paused(absl::Time now);
  // When the pause ends (InfinitePast: none begun).
  absl::Time resume_at() const { return resume_at_; }
  // Whether the spare fd is held now.
  bool has_spare() const { return static_cast<bool>(spare_); }

 private:
  explicit AcceptGuard(UniqueFd spare) : spare_(std::move(spare)) {}

  UniqueFd spare_;
  absl::Time resume_at_ = absl::InfinitePast();
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_UNIX_LISTENER_H_
