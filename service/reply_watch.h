// Bounds how long a gRPC reply may wait for its client to read it.
//
// hallocd's gRPC server is the sync one: a call keeps its thread until its
// reply is sent, and a reply is sent only as far as the client's HTTP/2
// window allows. A client that never opens it (SETTINGS_INITIAL_WINDOW_SIZE
// 0) never lets a reply go, and so kept a thread per call: one local user,
// with no session (Stats, IsSupported, Health.Check need none), on one
// connection, took all 32 and left every other client "Server Threadpool
// Exhausted".
//
// ReplyWatch is a server interceptor plus one thread. It notes each reply
// from the moment it is handed to gRPC until gRPC says it went, and cancels
// the call (TryCancel, which frees the thread) once it has waited
// `timeout`. A reply still waiting after `stuck_after` counts against its
// uid, which may have `per_uid` such at once: one past them is cancelled
// then, so that one uid's unread replies hold at most `per_uid` threads for
// long. A connection that had a reply cancelled is judged at once for a
// while (2 × `timeout` since the last): while its uid has `per_uid`
// replies stuck, each further reply on it is cancelled as it is handed to
// gRPC, on the call's thread, and its replies count as stuck after 1 ms
// instead of `stuck_after`. Else a client that opens a new unread call for
// each one cancelled kept every thread taken (~64 calls each held for
// `stuck_after`), and other users' calls, the watchdog's Health/Check
// among them, were refused. An honest client's replies go in microseconds
// and never count, even from sixteen clients of one uid on a loaded
// machine (the bench's throughput rows run them), nor are they judged at
// once on a connection of their own. Times are the monotonic clock's.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_REPLY_WATCH_H_
#define HALLOC_SERVICE_REPLY_WATCH_H_

#include <grpcpp/support/server_interceptor.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/control_peers.h"

namespace halloc {

class ReplyWatch {
 public:
  struct Options {
    // Longest a reply may wait for its client's window.
    absl::Duration timeout = absl::Seconds(5);
    // A reply waiting this long counts against its uid.
    absl::Duration stuck_after = absl::Milliseconds(100);
    // Most replies of one uid that may count at once.
    int per_uid = 8;
  };

  // `peers` names each call's uid (ControlPeers::LimitUid); may be null
  // (an in-process server: one shared count).
  ReplyWatch(Options options, std::shared_ptr<const ControlPeers> peers);
  ~ReplyWatch();
  ReplyWatch(const ReplyWatch&) = delete;
  ReplyWatch& operator=(const ReplyWatch&) = delete;

  // For grpc::ServerBuilder::experimental().SetInterceptorCreators; the
  // factory must not outlive this.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewFactory();

  // Replies waiting now, and calls cancelled since start.
  int waiting() const;
  uint64_t cancelled() const;

 private:
  class Interceptor;
  class Factory;
  struct Waiting {
    std::optional<uid_t> uid;
    std::string connection;  // ControlPeers::Call::connection
    absl::Time since;
    absl::Time count_at;   // when it counts as stuck, if still waiting
    bool counted = false;  // stuck, counted in by_uid_
  };

  // Notes a reply handed to gRPC; false when it is to be cancelled at
  // once instead (its uid judged at once and at its limit).
  bool Begin(grpc::ServerContextBase* call, std::optional<uid_t> uid, std::string connection);
  void CountCancelled();
  void End(grpc::ServerContextBase* call);
  void Run();
  // Cancels or counts what is due at `now`; returns when next to look.
  absl::Time Sweep(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const Waiting& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::shared_ptr<const ControlPeers> peers_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<grpc::ServerContextBase*, Waiting> waiting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::optional<uid_t>, int> by_uid_ ABSL_GUARDED_BY(mu_);
  // Connections (gRPC's peer names) judged at once (a reply on them was
  // cancelled), until when.
  absl::flat_hash_map<std::string, absl::Time> judged_at_once_ ABSL_GUARDED_BY(mu_);
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  uint64_t cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_REPLY_WATCH_H_
