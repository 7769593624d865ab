// Bounds how many gRPC calls one uid has in flight on hallocd's server.
//
// The server is the sync one, with at most 32 threads (its resource
// quota): each call holds one from its start until its reply has gone.
// Nothing bounded one uid's share of them: a connection may carry 64
// calls, and a uid may open hundreds of connections, so one local user,
// with no session (Stats, IsSupported and Health.Check need none), took
// every thread with ordinary fast calls, or with replies it never read on
// new connections (ReplyWatch cancels those only after `stuck_after`), and
// every other user's call got "Server Threadpool Exhausted" (measured by
// helper-100: 32 of 40 honest calls refused).
//
// A server interceptor counts each call against its uid (ControlPeers::
// LimitUid: the uid its connection is charged to) from its metadata to its
// end, reply included. A call that comes while its uid has `per_uid` in
// flight is not admitted: its handler answers RESOURCE_EXHAUSTED at once,
// which needs no flow-control window (trailers only), so it holds its
// thread for microseconds. The operators (IsOperatorUid: root and
// hallocd's own uid: administrators, the watchdog's probe) are not
// limited; nor is a call whose uid is not
// known (an in-process channel without ControlPeers).
//
// Thread-safe.
#ifndef HALLOC_SERVICE_CALLS_PER_UID_H_
#define HALLOC_SERVICE_CALLS_PER_UID_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/control_peers.h"

namespace halloc {

class CallsPerUid {
 public:
  // 8 of the server's 32 threads: four users at their limit still leave
  // none to a fifth only if all four flood at once.
  static constexpr int kDefaultPerUid = 8;

  // A uid whose calls are refused more than this many times within
  // kFloodWindow floods: refused calls cost a thread each for
  // microseconds, but one connection reopening its 64 as fast as they are
  // refused (~16,000 a second) still kept other users' calls from a
  // thread (16 of 40 refused). An honest client that meets the limit
  // retries a few times.
  static constexpr int kFloodRefusals = 256;
  static constexpr absl::Duration kFloodWindow = absl::Seconds(1);
  // Called (outside any lock of this class, on the refused call's thread)
  // for a uid that floods: hallocd cuts its control connections and
  // refuses its new ones for a while (GrpcListener::CutUid).
  using OnFlood = std::function<void(uid_t uid)>;

  explicit CallsPerUid(int per_uid = kDefaultPerUid,
                       std::shared_ptr<const ControlPeers> peers = nullptr,
                       OnFlood on_flood = nullptr);

  // The interceptor to install on the server (ServerBuilder::experimental()
  // .SetInterceptorCreators).
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewFactory();

  // For a handler, first thing: OK for a call admitted (or not counted),
  // RESOURCE_EXHAUSTED naming the limit for one that was not.
  absl::Status Admitted(const grpc::ServerContextBase* call) const;

  // The counting itself (the interceptor's; tests): whether a call of
  // `uid` is admitted now (and counted until End), and its end.
  bool Admit(std::optional<uid_t> uid);
  void End(std::optional<uid_t> uid);
  int in_flight(uid_t uid) const;

 private:
  class Interceptor;
  class Factory;
  // Whether `uid`'s calls are counted at all.
  bool Limited(std::optional<uid_t> uid) const;
  void Refused(const grpc::ServerContextBase* call, bool refused);

  const int per_uid_;
  const std::shared_ptr<const ControlPeers> peers_;
  const OnFlood on_flood_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uid_t, int> in_flight_ ABSL_GUARDED_BY(mu_);
  // Refusals per uid in its current window (since `since`).
  struct Refusals {
    absl::Time since;
    int count = 0;
  };
  absl::flat_hash_map<uid_t, Refusals> refusals_ ABSL_GUARDED_BY(mu_);
  // Calls not admitted, until they end (few, and each for microseconds).
  absl::flat_hash_set<const grpc::ServerContextBase*> refused_ ABSL_GUARDED_BY(mu_);
};

// OK, or RESOURCE_EXHAUSTED for a call `calls` did not admit (OK without
// `calls`: a server without the limit), as gRPC's status.
grpc::Status AdmittedBy(const CallsPerUid* calls, const grpc::ServerContextBase* call);

}  // namespace halloc

#endif  // HALLOC_SERVICE_CALLS_PER_UID_H_
