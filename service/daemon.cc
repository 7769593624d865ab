#include "service/daemon.h"

#include <glog/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/backend/registry.h"
#include "service/connection_limits.h"
#include "service/grpc_listener.h"
#include "service/grpc_service.h"
#include "service/health.h"
#include "service/metrics/http_server.h"
#include "service/metrics/prometheus.h"
#include "service/peer_identity.h"
#include "service/policy/policy.h"
#include "service/reflection.h"
#include "service/util/unix_listener.h"

namespace halloc {
namespace {

// Rules that validate but that `backend` cannot serve, exe rules that
// match nothing as their paths stand, and rules an unprivileged process
// can match where it may create user namespaces (service/peer_identity.h,
// SampleExe), said once per load.
void WarnOfRules(const Policy& policy, const Backend& backend) {
  for (const std::string& problem : policy.BackendProblems(backend)) {
    LOG(WARNING) << "policy: " << problem;
  }
  for (const std::string& problem : policy.ExeRuleProblems()) {
    LOG(WARNING) << "policy: " << problem;
  }
  const std::vector<std::string> open = policy.ExeRulesOpenToAnyUid();
  if (open.empty() || !UnprivilegedUserNamespaces()) return;
  LOG(WARNING) << "policy: rule(s) " << absl::StrJoin(open, ", ")
               << " match by executable alone, and unprivileged user namespaces are enabled "
                  "here: any local user can make /proc/PID/exe name a file it can open, so "
                  "these rules hold against no uid. Add uids or gids to them, or set "
                  "kernel.unprivileged_userns_clone=0 (user.max_user_namespaces=0).";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(DaemonOptions options,
                                                      InheritedListeners inherited) {
  std::unique_ptr<Daemon> d(new Daemon(std::move(options)));
  std::vector<std::string> skipped;
  const BackendConfig config{d->options_.dma_heap, d->options_.skip_closed_nodes,
                             d->options_.pool_max_bytes, d->options_.pool_idle_timeout,
                             d->options_.read_only_for_own_uid};
  absl::StatusOr<std::unique_ptr<Backend>> created =
      CreateBackend(d->options_.backend, config, &skipped);
  // A node closed for now: udev may not have given it to hallocd's group
  // yet (early in boot), so it is tried again for a while.
  bool said = false;
  for (const absl::Time end = absl::Now() + d->options_.closed_node_wait;
       !config.skip_closed_nodes && absl::IsPermissionDenied(created.status()) &&
       absl::Now() < end;) {
    if (!std::exchange(said, true)) {
      LOG(WARNING) << created.status().message() << "; waiting up to "
                   << d->options_.closed_node_wait << " for it to open";
    }
    absl::SleepFor(absl::Milliseconds(100));
    skipped.clear();
    created = CreateBackend(d->options_.backend, config, &skipped);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, std::move(created));
  LOG(INFO) << "backend: " << backend->name();
  for (const std::string& why : skipped) LOG(INFO) << "backend auto: passed over " << why;
  if (d->options_.read_only_for_own_uid) {
    if (backend->name() != "memfd" || ::geteuid() == 0) {
      LOG(WARNING) << "--read_only_for_own_uid does nothing here (it is for memfd backends of "
                      "a hallocd that is not root)";
    } else {
      LOG(WARNING) << "--read_only_for_own_uid: read-only memfds handed to uid " << ::geteuid()
                   << " and its containers bind them only as far as they choose";
    }
  }
  std::shared_ptr<const Policy> policy = Policy::Default();
  if (!d->options_.policy_file.empty()) {
    ASSIGN_OR_RETURN(policy, Policy::Load(d->options_.policy_file));
  }
  LOG(INFO) << "policy: " << policy->source() << " (" << policy->rules().size()
            << " client rules)";
  WarnOfRules(*policy, *backend);
  d->core_ = std::make_unique<Allocator>(std::move(backend), d->options_.limits,
                                         std::move(policy));
  d->control_peers_ = std::make_shared<ControlPeers>();
  Daemon* self = d.get();
  d->calls_per_uid_ = std::make_unique<CallsPerUid>(
      d->options_.grpc_calls_per_uid, d->control_peers_, [self](uid_t uid) {
        absl::MutexLock lock(&self->listener_mu_);
        if (self->control_listener_ != nullptr) {
          self->control_listener_->CutUid(uid, "a flood of gRPC calls past its limit");
        }
      });
  d->service_ = std::make_unique<AllocatorService>(
      d->core_.get(), d->control_peers_,
      [self](std::optional<uid_t> only_uid) { return self->Stats(only_uid); },
      d->calls_per_uid_.get(), d->options_.grpc_streams);
  const bool broker_inherited = inherited.broker.is_valid();
  RETURN_IF_ERROR(d->StartControl(std::move(inherited.control)));
  // What a control connection costs is known now: the connection
  // defaults and hallocd's buffer room (the policy's limits) follow it.
  {
    absl::MutexLock lock(&d->listener_mu_);
    SetControlConnectionFds(d->control_listener_->relaying() ? 4 : 2);
  }
  d->core_->SetPolicy(d->core_->policy());
  // The broker last: a client connects to it first, so once it exists the
  // control plane is ready too.
  RETURN_IF_ERROR(d->StartBroker(std::move(inherited.broker)));
  if (!d->options_.metrics_address.empty()) RETURN_IF_ERROR(d->StartMetrics());
  LOG(INFO) << "listening: control unix:" << d->options_.control_socket
            << (d->control_from_systemd_ ? " (from systemd)" : "") << ", broker "
            << d->options_.broker_socket << (broker_inherited ? " (from systemd)" : "");
  return d;
}

void ApplyGrpcLimits(const DaemonOptions& options, ReplyWatch* watch, CallsPerUid* calls,
                     grpc::ServerBuilder& builder) {
  grpc::ResourceQuota quota("hallocd");
  quota.SetMaxThreads(options.grpc_max_threads);
  builder.SetMaxReceiveMessageSize(options.grpc_max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             options.grpc_max_streams_per_connection);
  // What gRPC holds of requests not yet complete (see
  // DaemonOptions::grpc_max_memory_bytes): each call's window one request
  // (and a frame's header, and slack), not grown by BDP probing; all of
  // them together the quota's memory.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             options.grpc_max_message_bytes + 1024);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  quota.Resize(static_cast<size_t>(options.grpc_max_memory_bytes));
  builder.SetResourceQuota(quota);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> watchers;
  if (calls != nullptr) watchers.push_back(calls->NewFactory());
  watchers.push_back(watch->NewFactory());
  builder.experimental().SetInterceptorCreators(std::move(watchers));
}

absl::Status Daemon::StartControl(UniqueFd inherited) {
  const std::string& control = options_.control_socket;
  // hallocd accepts on the control socket itself (systemd's, or one it
  // binds) and hands gRPC each connection it admits: gRPC would take any
  // number from anyone (grpc_listener.h).
  const bool from_systemd = inherited.is_valid();
  if (!from_systemd) {
    ASSIGN_OR_RETURN(BoundSocket bound,
                     BindUnixSocket(control, SOCK_STREAM, options_.socket_mode));
    inherited = std::move(bound.fd);
    control_file_ = std::move(bound.file);
  }
  control_from_systemd_ = from_systemd;
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  // Ours, not grpc::EnableDefaultHealthCheckService: see health.h.
  health_ = std::make_unique<HealthService>(
      std::vector<std::string>{std::string(v1::Allocator::service_full_name())}, control_peers_,
      calls_per_uid_.get(), options_.grpc_streams);
  builder.RegisterService(health_.get());
  reflection_ = std::make_unique<ReflectionService>(
      std::vector<std::string>{
          std::string(v1::Allocator::service_full_name()),
          std::string(grpc::health::v1::Health::service_full_name()),
          std::string(grpc::reflection::v1alpha::ServerReflection::service_full_name())},
      control_peers_, calls_per_uid_.get(), options_.grpc_streams);
  builder.RegisterService(reflection_.get());
  reply_watch_ = std::make_unique<ReplyWatch>(options_.grpc_replies, control_peers_);
  ApplyGrpcLimits(options_, reply_watch_.get(), calls_per_uid_.get(), builder);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("gRPC server failed to start on unix:", control));
  }
  Allocator* core = core_.get();
  ASSIGN_OR_RETURN(std::unique_ptr<GrpcListener> listener,
                   GrpcListener::Start(
                       std::move(inherited), server_.get(),
                       [core](uid_t uid, ConnectionCounts held) {
                         return AdmitConnection(*core->policy(), uid, held, "control connections");
                       },
                       control_peers_, [core] { return ConnectRate::Of(*core->policy()); }));
  absl::MutexLock lock(&listener_mu_);
  control_listener_ = std::move(listener);
  return absl::OkStatus();
}

v1::StatsResponse Daemon::Stats(std::optional<uid_t> only_uid) {
  v1::StatsResponse s = core_->Stats(only_uid);
  if (reply_watch_) s.set_grpc_replies_cancelled_total(reply_watch_->cancelled());
  absl::MutexLock lock(&listener_mu_);
  uint64_t rate_limited = broker_ ? broker_->rate_limited_total() : 0;
  if (control_listener_) {
    s.set_grpc_connections_cut_total(control_listener_->cut_total());
    rate_limited += control_listener_->rate_limited_total();
  }
  s.set_connections_rate_limited_total(rate_limited);
  return s;
}

absl::Status Daemon::StartBroker(UniqueFd inherited) {
  // systemd's socket: its mode and group are the socket unit's.
  ASSIGN_OR_RETURN(std::unique_ptr<Broker> broker,
                   inherited
                       ? Broker::Serve(std::move(inherited), options_.broker_socket, core_.get())
                       : Broker::Start(options_.broker_socket, options_.socket_mode, core_.get()));
  // Under the lock Stats reads it with: the control socket serves already.
  absl::MutexLock lock(&listener_mu_);
  broker_ = std::move(broker);
  return absl::OkStatus();
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
  WarnOfRules(**p, core_->backend());
  core_->SetPolicy(*std::move(p));
  return absl::OkStatus();
}

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() { Shutdown(absl::ZeroDuration()); }

absl::Status Daemon::StartMetrics() {
  auto start = [this]() -> absl::Status {
    MetricsServer::Options metrics_options;
    metrics_options.scraper_uids = options_.metrics_scraper_uids;
    absl::StatusOr<std::unique_ptr<MetricsServer>> m = MetricsServer::Start(
        options_.metrics_address, [this] { return ToPrometheus(Stats()); }, metrics_options);
    if (!m.ok()) return m.status();
    absl::MutexLock lock(&metrics_mu_);
    metrics_ = *std::move(m);
    LOG(INFO) << "metrics: http://" << options_.metrics_address << "/metrics";
    return absl::OkStatus();
  };
  const absl::Status first = start();
  // A wrong address is the configuration's fault: refused at start.
  if (first.ok() || absl::IsInvalidArgument(first)) return first;
  // One that is taken (any local user can bind a loopback port first, and
  // hallocd starts at its first client) must not keep the allocator down:
  // it serves on without metrics and tries again every kMetricsRetry.
  LOG(ERROR) << "metrics: " << first.message()
             << "; hallocd serves on without metrics, trying again every "
             << absl::FormatDuration(kMetricsRetry);
  metrics_retry_ = std::thread([this, start] {
    while (!stop_metrics_retry_.WaitForNotificationWithTimeout(kMetricsRetry)) {
      if (start().ok()) return;
    }
  });
  return absl::OkStatus();
}

void Daemon::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  stop_metrics_retry_.Notify();
  if (metrics_retry_.joinable()) metrics_retry_.join();
  {
    absl::MutexLock lock(&metrics_mu_);
    metrics_.reset();
  }
  // No new connections on systemd's socket: they wait there for the next
  // hallocd instead.
  {
    absl::MutexLock lock(&listener_mu_);
    if (control_listener_) control_listener_->Stop();
  }
  if (server_) {
    if (health_) health_->Shutdown();  // NOT_SERVING from now on
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoSeconds(grace));
    server_->Wait();
    control_file_.Remove();  // none when systemd's
  }
  Broker* broker = nullptr;
  {
    absl::MutexLock lock(&listener_mu_);
    broker = broker_.get();
  }
  if (broker != nullptr) broker->Stop();
}

}  // namespace halloc
