// hallocd's pieces wired together: the core, the broker and the gRPC server.
// Used by hallocd's main and, in-process, by the test fixture.
#ifndef HALLOC_SERVICE_DAEMON_H_
#define HALLOC_SERVICE_DAEMON_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/allocator.h"
#include "service/backend/registry.h"
#include "service/broker.h"
#include "service/calls_per_uid.h"
#include "service/control_peers.h"
#include "service/reply_watch.h"
#include "service/stream_deadlines.h"
#include "service/util/unix_listener.h"

namespace grpc {
class Server;
class ServerBuilder;
}

namespace halloc {

class AllocatorService;
class GrpcListener;
class HealthService;
class ReflectionService;
class MetricsServer;

struct DaemonOptions {
  // gRPC control-plane socket and broker socket paths.
  std::string control_socket;
  std::string broker_socket;
  // Permissions of both socket files.
  mode_t socket_mode = 0660;
  // Backend name or "auto".
  std::string backend = "auto";
  // dmaheap backend: the heap under /dev/dma_heap; empty: chosen
  // (service/backend/registry.h, BackendConfig).
  std::string dma_heap;
  // "auto": pass over a backend whose node is closed to hallocd
  // (BackendConfig::skip_closed_nodes).
  bool skip_closed_nodes = true;
  // memfd-pool's bounds (BackendConfig::pool_max_bytes, pool_idle_timeout).
  uint64_t pool_max_bytes = BackendConfig().pool_max_bytes;
  absl::Duration pool_idle_timeout = BackendConfig().pool_idle_timeout;
  // BackendConfig::read_only_for_own_uid.
  bool read_only_for_own_uid = false;
  // Without skipping (only then): how long a closed node is waited for
  // before hallocd gives up (a client that connects early in boot may start it before
  // udev has given the nodes to its group).
  absl::Duration closed_node_wait = absl::Seconds(5);
  Limits limits;
  // Policy file (text format of halloc.v1.Policy); empty: built-in default
  // (every client may do everything, sharing within its own uid).
  std::string policy_file;
  // Most threads the gRPC server may run (its resource quota): calls beyond
  // them wait or get RESOURCE_EXHAUSTED, so thousands of concurrent streams
  // cannot grow hallocd to thousands of threads.
  int grpc_max_threads = 32;
  // Most concurrent calls (streams) on one gRPC connection.
  int grpc_max_streams_per_connection = 64;
  // Most gRPC calls one uid may have in flight, all its connections
  // together (root and hallocd's own uid: any): calls_per_uid.h.
  int grpc_calls_per_uid = CallsPerUid::kDefaultPerUid;
  // Largest gRPC request hallocd reads, in bytes: a longer one is refused
  // with RESOURCE_EXHAUSTED before it is parsed. Parsing multiplies a
  // message's size (each 2-byte empty entry of a repeated or unknown field
  // is an object of its own): at gRPC's default of 4 MiB, 8 requests took
  // hallocd from 22 MB to 0.8-1.3 GB, with no session needed. The broker's
  // limit (kMaxRequestBytes), far above any real request; a Release of
  // more ids is a ReleaseMany stream.
  int grpc_max_message_bytes = kMaxRequestBytes;
  // Most memory gRPC's transport may hold (its resource quota), in bytes.
  // What a client sends is held until its message is complete, and a
  // client need never complete it: at gRPC's defaults (each call's window
  // 4 MiB and growing), 4 connections of 64 unfinished calls took hallocd
  // to 1 GB, with no session needed. Each call's window is therefore kept
  // to one request (grpc_max_message_bytes), and past this total gRPC
  // reclaims: it ends a connection's calls ("Buffers full") rather than
  // grow. It does so a connection at a time, behind a flood: 200
  // connections of such calls took hallocd's peak RSS up by ~227 MiB at
  // 64 MiB (~382 MiB at 128 MiB, ~924 MiB unbounded).
  int64_t grpc_max_memory_bytes = int64_t{64} << 20;
  // How long a gRPC reply may wait for its client to read it, and how many
  // of one uid's may wait long (service/reply_watch.h).
  ReplyWatch::Options grpc_replies;
  // How long a long-lived gRPC stream may hold its place: a ReleaseMany,
  // a reflection stream, a health watch (service/stream_deadlines.h).
  StreamTimeLimits grpc_streams;
  // Where to serve Prometheus metrics (GET /metrics): "127.0.0.1:PORT" or
  // "[::1]:PORT" (service/metrics/http_server.h); empty: not served.
  std::string metrics_address;
  // The uids that scrape it (MetricsServer::Options::scraper_uids): when
  // given, all other uids share half its connection slots.
  std::vector<uid_t> metrics_scraper_uids;
};

// The gRPC server's limits from `options` (threads, streams, message
// size, transport memory) and `watch` on its replies: hallocd's control
// server, and tests that stand in for it.
// `calls` (may be null) counts each uid's calls in flight.
void ApplyGrpcLimits(const DaemonOptions& options, ReplyWatch* watch, CallsPerUid* calls,
                     grpc::ServerBuilder& builder);

// Sockets already listening that hallocd was handed (systemd socket
// activation, see service/systemd/activation.h). A valid one is served
// instead of binding the option's path; that path is then only a name for
// logs and probes, and is left alone at shutdown (systemd owns the socket).
struct InheritedListeners {
  UniqueFd control;  // a listening SOCK_STREAM Unix socket
  UniqueFd broker;   // a listening SOCK_SEQPACKET Unix socket
};

class Daemon {
 public:
  // Serves halloc.v1.Allocator, the standard health service
  // (grpc.health.v1.Health: SERVING for "" and "halloc.v1.Allocator" until
  // Shutdown) and server reflection on the control socket.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(DaemonOptions options,
                                                       InheritedListeners inherited = {});
  ~Daemon();

  // Stops accepting, lets in-flight calls finish (up to `grace`), then ends
  // every session. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  // Re-reads options().policy_file. On any error the old policy stays, the
  // error is logged and returned.
  absl::Status ReloadPolicy();

  const DaemonOptions& options() const { return options_; }
  Allocator& core() { return *core_; }

 private:
  explicit Daemon(DaemonOptions options);
  absl::Status StartControl(UniqueFd inherited);
  // The core's statistics and the control socket's guards' counters.
  v1::StatsResponse Stats(std::optional<uid_t> only_uid = std::nullopt);
  absl::Status StartBroker(UniqueFd inherited);

  DaemonOptions options_;
  std::unique_ptr<Allocator> core_;
  // Each control connection's peer, noted by the listener, read by the service.
  std::shared_ptr<ControlPeers> control_peers_;
  std::unique_ptr<AllocatorService> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<ReflectionService> reflection_;
  // Outlive server_, whose calls they watch.
  std::unique_ptr<ReplyWatch> reply_watch_;
  std::unique_ptr<CallsPerUid> calls_per_uid_;
  std::unique_ptr<grpc::Server> server_;
  // Accepts for server_ on the control socket, systemd's or our own. Set
  // once server_ serves (Stats may read it from then on).
  absl::Mutex listener_mu_;
  std::unique_ptr<GrpcListener> control_listener_ ABSL_GUARDED_BY(listener_mu_);
  bool control_from_systemd_ = false;
  SocketFile control_file_;  // the control socket's file, when bound here
  // Set after the control socket serves, so under listener_mu_ too.
  std::unique_ptr<Broker> broker_ ABSL_GUARDED_BY(listener_mu_);
  // Metrics: served from Create when the address is free, else from a
  // thread trying again every kMetricsRetry until it is or hallocd stops.
  static constexpr absl::Duration kMetricsRetry = absl::Seconds(1);
  absl::Status StartMetrics();
  absl::Mutex metrics_mu_;
  std::unique_ptr<MetricsServer> metrics_ ABSL_GUARDED_BY(metrics_mu_);
  absl::Notification stop_metrics_retry_;
  std::thread metrics_retry_;
  bool shut_down_ = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_DAEMON_H_
