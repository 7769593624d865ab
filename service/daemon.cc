#include "service/daemon.h"

#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "service/backend/registry.h"
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
  std::shared_ptr<const Policy> policy = Policy::Default();
  if (!d->options_.policy_file.empty()) {
    ASSIGN_OR_RETURN(policy, Policy::Load(d->options_.policy_file));
  }
  LOG(INFO) << "policy: " << policy->source() << " (" << policy->rules().size()
            << " client rules)";
  d->core_ = std::make_unique<Allocator>(std::move(backend), d->options_.limits,
                                         std::move(policy));
  d->service_ = std::make_unique<AllocatorService>(d->core_.get());

  const std::string& control = d->options_.control_socket;
  RETURN_IF_ERROR(RemoveStaleSocket(control));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", control),
                           grpc::InsecureServerCredentials());
  builder.RegisterService(d->service_.get());
  grpc::ResourceQuota quota("hallocd");
  quota.SetMaxThreads(d->options_.grpc_max_threads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             d->options_.grpc_max_streams_per_connection);
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

absl::Status Daemon::ReloadPolicy() {
  if (options_.policy_file.empty()) {
    LOG(INFO) << "policy reload: no --policy file; keeping the built-in default";
    return absl::OkStatus();
  }
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Load(options_.policy_file);
  if (!p.ok()) {
    core_->CountPolicyReloadFailure();
    LOG(ERROR) << "policy reload rejected, keeping the old policy:\n" << p.status().message();
    return p.status();
  }
  LOG(INFO) << "policy reloaded from " << (*p)->source() << " ("
            << (*p)->rules().size() << " client rules)";
  core_->SetPolicy(*std::move(p));
  return absl::OkStatus();
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
