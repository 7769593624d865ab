// The broker: the SOCK_SEQPACKET Unix socket that carries fds and whose
// connections are the clients' sessions.
//
// For each accepted connection it reads SO_PEERCRED, opens a Session in the
// core and sends the Hello frame (with the session token). It then watches
// the connection; when the peer closes it (or dies), the session ends and
// everything it held is released. Clients send nothing on this socket; bytes
// they do send are discarded.
#ifndef HALLOC_SERVICE_BROKER_H_
#define HALLOC_SERVICE_BROKER_H_

#include <sys/stat.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "service/allocator.h"
#include "service/util/unique_fd.h"

namespace halloc {

class Broker {
 public:
  // Binds `path` (mode `mode`) and starts the accept/watch thread.
  static absl::StatusOr<std::unique_ptr<Broker>> Start(const std::string& path,
                                                       mode_t mode,
                                                       Allocator* core);
  ~Broker();  // Stops the thread and ends every session.

  // Stops accepting and ends every session. Idempotent.
  void Stop();

 private:
  Broker(Allocator* core, UniqueFd listener, UniqueFd epoll, UniqueFd wake,
         std::string path);
  void Run();
  void Accept();
  void OnReadable(uint64_t session_id);
  void EndSession(uint64_t session_id);

  Allocator* const core_;
  const UniqueFd listener_;
  const UniqueFd epoll_;
  const UniqueFd wake_;  // eventfd that stops Run()
  const std::string path_;
  // Only touched by the broker thread (and Stop after join).
  absl::flat_hash_map<uint64_t, std::shared_ptr<Session>> sessions_;
  std::thread thread_;
  bool stopped_ = false;
};

// Binds a Unix socket of `type` at `path` with permissions `mode`, replacing
// a stale socket file (one nobody listens on). ALREADY_EXISTS when a live
// server owns the path.
absl::StatusOr<UniqueFd> BindUnixSocket(const std::string& path, int type,
                                        mode_t mode);
// Removes a socket file at `path` if nobody listens on it.
absl::Status RemoveStaleSocket(const std::string& path);

}  // namespace halloc

#endif  // HALLOC_SERVICE_BROKER_H_
