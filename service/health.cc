#include "service/health.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/util/clock.h"

namespace halloc {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

// How often a Watch looks whether its caller went away (the sync API has
// no wake-up for that).
constexpr absl::Duration kWatchPoll = absl::Seconds(1);

}  // namespace

HealthService::HealthService(std::vector<std::string> services,
                             std::shared_ptr<const ControlPeers> peers, const CallsPerUid* calls,
                             const StreamTimeLimits& times)
    : services_(std::move(services)),
      peers_(std::move(peers)),
      calls_(calls),
      watch_lifetime_(times.watch_lifetime) {}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
}

bool HealthService::Known(const std::string& service) const {
  return service.empty() ||
         std::find(services_.begin(), services_.end(), service) != services_.end();
}

grpc::Status HealthService::Check(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  HealthCheckResponse* resp) {
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;
  if (!Known(req->service())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("unknown service '", req->service(), "'"));
  }
  absl::MutexLock lock(&mu_);
  resp->set_status(shut_down_ ? HealthCheckResponse::NOT_SERVING
                              : HealthCheckResponse::SERVING);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* ctx, const HealthCheckRequest* req,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;
  absl::StatusOr<StreamSlots::Slot> slot =
      watchers_.Take(ControlPeers::LimitUid(peers_.get(), ctx->peer()));
  if (!slot.ok()) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat(slot.status().message(), " (use Check)"));
  }
  const absl::Time end = MonotonicNow() + watch_lifetime_;
  bool shut_down;
  {
    absl::MutexLock lock(&mu_);
    shut_down = shut_down_;
  }
  const bool known = Known(req->service());
  HealthCheckResponse resp;
  resp.set_status(!known      ? HealthCheckResponse::SERVICE_UNKNOWN
                  : shut_down ? HealthCheckResponse::NOT_SERVING
                              : HealthCheckResponse::SERVING);
  bool open = writer->Write(resp);
  // The status changes once at most (Shutdown); wait for that, for the
  // caller to go away, or for the watch's end.
  while (open && !shut_down) {
    const absl::Duration left = end - MonotonicNow();
    // Its place goes to whoever asks next, the watcher again, maybe.
    // (Nothing more is sent: a NOT_SERVING would mark hallocd down.)
    if (left <= absl::ZeroDuration()) return grpc::Status::OK;
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&shut_down_), std::min(kWatchPoll, left));
    shut_down = shut_down_;
    if (!shut_down && ctx->IsCancelled()) open = false;
  }
  if (open && known && resp.status() != HealthCheckResponse::NOT_SERVING) {
    resp.set_status(HealthCheckResponse::NOT_SERVING);
    writer->Write(resp);
  }
  return open ? grpc::Status::OK
              : grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away");
}

}  // namespace halloc
