#include "service/daemon.h"

#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "service/grpc_service.h"
#include "service/util/os_error.h"
#include "service/util/status_macros.h"

namespace halloc {

std::string DefaultSocketDir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] != '\0') return absl::StrCat(xdg, "/halloc");
  return "/run/halloc";
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(DaemonOptions options) {
  std::unique_ptr<Daemon> d(new Daemon(std::move(options)));
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   CreateBackend(d->options_.backend));
  LOG(INFO) << "backend: " << backend->name();
  d->core_ = std::make_unique<Allocator>(std::move(backend), d->options_.limits);
  d->service_ = std::make_unique<AllocatorService>(d->core_.get());

  const std::string& control = d->options_.control_socket;
  RETURN_IF_ERROR(RemoveStaleSocket(control));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", control),
                           grpc::InsecureServerCredentials());
  builder.RegisterService(d->service_.get());
  d->server_ = builder.BuildAndStart();
  if (d->server_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("gRPC server failed to listen on unix:", control));
  }
  if (::chmod(control.c_str(), d->options_.socket_mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod(", control, ")"));
  }
  // The broker last: a client connects to it first, so once it exists the
  // control plane is ready too.
  ASSIGN_OR_RETURN(d->broker_, Broker::Start(d->options_.broker_socket,
                                             d->options_.socket_mode,
                                             d->core_.get()));
  LOG(INFO) << "listening: control unix:" << control << ", broker "
            << d->options_.broker_socket;
  return d;
}

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

void Daemon::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoSeconds(grace));
    server_->Wait();
    ::unlink(options_.control_socket.c_str());
  }
  if (broker_) broker_->Stop();
}

}  // namespace halloc
