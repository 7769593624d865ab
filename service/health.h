// grpc.health.v1.Health for hallocd, on the sync server like every other
// service there.
//
// gRPC's own default health service is written with the callback API; one
// callback method on an otherwise synchronous server makes every call pay
// for a second completion queue and its pollers: hallocd's empty RPCs took
// 150-165 µs with it and 105-125 µs without (interleaved runs, this
// project's 2-vCPU machine). This one answers Check inline and serves Watch
// on a server thread, at most kMaxWatchers at a time and kMaxWatchersPerUid
// of them for one uid (a watcher holds a thread for as long as it watches;
// beyond either limit: RESOURCE_EXHAUSTED; service/util/stream_slots.h).
// A watch ends (OK) once it is StreamTimeLimits::watch_lifetime old, so
// that the places rotate: else two uids each holding two watches kept
// every other watcher out for good. A watcher watches again when its
// stream ends with any status but UNIMPLEMENTED (health.proto), as gRPC's
// own client-side health checking does.
//
// Status: SERVING for the server ("") and for the services it was given,
// from construction until Shutdown(), NOT_SERVING after; NOT_FOUND (Check)
// or SERVICE_UNKNOWN (Watch, which then stays open, as the protocol says)
// for any other name. Shutdown() also ends every Watch after it has sent
// NOT_SERVING, so that the server's own shutdown need not wait for them.
#ifndef HALLOC_SERVICE_HEALTH_H_
#define HALLOC_SERVICE_HEALTH_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "service/calls_per_uid.h"
#include "service/control_peers.h"
#include "service/stream_deadlines.h"
#include "service/util/stream_slots.h"

namespace halloc {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  static constexpr int kMaxWatchers = 4;
  static constexpr int kMaxWatchersPerUid = 2;

  // With `peers` (hallocd's), watchers are counted per uid too; with
  // `calls` (hallocd's), a call its uid's limit did not admit is refused.
  // `times`: how long a watch lasts (its watch_lifetime).
  explicit HealthService(std::vector<std::string> services,
                         std::shared_ptr<const ControlPeers> peers = nullptr,
                         const CallsPerUid* calls = nullptr, const StreamTimeLimits& times = {});

  // NOT_SERVING from now on; ends every Watch. Idempotent.
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* ctx,
                     const grpc::health::v1::HealthCheckRequest* req,
                     grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx,
                     const grpc::health::v1::HealthCheckRequest* req,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  bool Known(const std::string& service) const;

  const std::vector<std::string> services_;
  const std::shared_ptr<const ControlPeers> peers_;
  const CallsPerUid* const calls_;
  const absl::Duration watch_lifetime_;
  StreamSlots watchers_{"health watches", kMaxWatchers, kMaxWatchersPerUid};
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_HEALTH_H_
