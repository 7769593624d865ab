// Serves a gRPC server on a listening socket it did not create (systemd's
// control socket).
//
// gRPC 1.51 can listen only on addresses it binds itself ("unix:PATH"), and
// binding systemd's path again would replace systemd's socket. What it does
// offer is grpc::AddInsecureChannelFromFd (grpcpp/server_posix.h): serve one
// already *connected* fd. So one thread accepts on the inherited socket and
// hands each connection to the server that way; from then on the
// connection is gRPC's like any other (same channel args, resource quota,
// shutdown). Out of fds, it accepts-and-closes with a reserve fd and pauses
// 100 ms instead of spinning, as the broker does.
#ifndef HALLOC_SERVICE_SYSTEMD_GRPC_LISTENER_H_
#define HALLOC_SERVICE_SYSTEMD_GRPC_LISTENER_H_

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace grpc {
class Server;
}

namespace halloc {

class GrpcListener {
 public:
  // Starts accepting on `listener` (a listening SOCK_STREAM socket, made
  // non-blocking here) for `server`, which must outlive Stop().
  static absl::StatusOr<std::unique_ptr<GrpcListener>> Start(UniqueFd listener,
                                                             grpc::Server* server);
  ~GrpcListener();  // Stop()

  // Stops accepting; connections already handed over stay the server's.
  // Call before the server's Shutdown. Idempotent.
  void Stop();

 private:
  GrpcListener(UniqueFd listener, UniqueFd wake, UniqueFd reserve, grpc::Server* server);
  void Run();
  // Accepts one connection; false when accepting should pause.
  bool AcceptOne();

  const UniqueFd listener_;
  const UniqueFd wake_;  // eventfd that stops Run()
  UniqueFd reserve_;     // freed at EMFILE to accept and close
  grpc::Server* const server_;
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_SYSTEMD_GRPC_LISTENER_H_
