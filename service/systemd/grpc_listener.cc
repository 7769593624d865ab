#include "service/systemd/grpc_listener.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "clients/cpp/halloc/base/os_error.h"

namespace halloc {
namespace {

constexpr int kAcceptPauseMs = 100;

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcListener>> GrpcListener::Start(UniqueFd listener,
                                                                  grpc::Server* server) {
  // Non-blocking, so that a connection gone between poll() and accept()
  // cannot park the thread in accept() where Stop() cannot wake it. (The
  // flag is on the open file description systemd shares; systemd only
  // polls it, never accepts.)
  const int flags = ::fcntl(listener.get(), F_GETFL);
  if (flags < 0 || ::fcntl(listener.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK) on the control socket");
  }
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoStatus(errno, "eventfd");
  UniqueFd reserve(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!reserve) return ErrnoStatus(errno, "open(/dev/null)");
  std::unique_ptr<GrpcListener> l(
      new GrpcListener(std::move(listener), std::move(wake), std::move(reserve), server));
  l->thread_ = std::thread([p = l.get()] { p->Run(); });
  return l;
}

GrpcListener::GrpcListener(UniqueFd listener, UniqueFd wake, UniqueFd reserve,
                           grpc::Server* server)
    : listener_(std::move(listener)), wake_(std::move(wake)), reserve_(std::move(reserve)),
      server_(server) {}

GrpcListener::~GrpcListener() { Stop(); }

void GrpcListener::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    PLOG(ERROR) << "control socket: cannot wake the accepting thread";
  }
  if (thread_.joinable()) thread_.join();
}

void GrpcListener::Run() {
  bool paused = false;
  for (;;) {
    pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {listener_.get(), POLLIN, 0}};
    const int n = ::poll(fds, paused ? 1 : 2, paused ? kAcceptPauseMs : -1);
    if (n < 0 && errno != EINTR) {
      PLOG(ERROR) << "control socket: poll";
      return;
    }
    if (n > 0 && fds[0].revents != 0) return;
    if (paused) {
      paused = false;
      if (!reserve_) reserve_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      continue;
    }
    if (n > 0) paused = !AcceptOne();
  }
}

bool GrpcListener::AcceptOne() {
  // gRPC's endpoints expect non-blocking fds.
  UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (conn) {
    grpc::AddInsecureChannelFromFd(server_, conn.release());  // gRPC owns it now
    return true;
  }
  const int err = errno;
  if (err == EMFILE || err == ENFILE) {
    // Take the waiting connection with the reserve fd and close it, so its
    // client sees the end instead of hanging; then pause.
    reserve_.reset();
    UniqueFd drop(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    LOG_EVERY_N(WARNING, 100) << "control socket: accept4: " << std::strerror(err)
                              << "; refusing connections for " << kAcceptPauseMs << " ms";
    return false;
  }
  if (err != EAGAIN && err != ECONNABORTED && err != EINTR) {
    LOG_EVERY_N(WARNING, 100) << "control socket: accept4: " << std::strerror(err);
  }
  return true;
}

}  // namespace halloc
