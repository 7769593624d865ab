// Serves a gRPC server on a listening socket hallocd accepts on itself (the
// control socket it bound, or systemd's), holding each uid to its number of
// connections.
//
// gRPC 1.51 accepts every connection on an address it binds itself: any
// local user could open connections until hallocd runs out of fds (and
// every client with it). What it also offers is
// grpc::AddInsecureChannelFromFd (grpcpp/server_posix.h): serve one
// already *connected* fd. So one thread accepts, asks `admit`
// (connection_limits.h) with the peer's kernel-verified uid (SO_PEERCRED)
// and what that uid and everyone hold, closes a refused connection at once
// (the client sees the connection end: UNAVAILABLE) and hands an admitted
// one to the server; from then on it is gRPC's like any other (same channel
// args, resource quota, shutdown).
//
// To see a connection end, the thread keeps a duplicate of its fd in an
// epoll set: the peer closing it (or shutting down its writing side, after
// which gRPC closes it too), or gRPC shutting it down (which it does before
// closing its own fd), shows as EPOLLRDHUP/EPOLLHUP; the duplicate is
// closed and the count drops. A connection ended otherwise stays counted
// (and open) until its peer closes: that is still the peer's connection.
//
// Out of fds, it accepts-and-closes with a reserve fd and pauses 100 ms
// instead of spinning, as the broker does.
//
// A client that reads nothing of what gRPC sends it holds gRPC's threads:
// once its socket's buffer is full, each further reply's status cannot go
// out, and the sync server's thread waits for the call to close (no cancel
// ends that wait: the bytes are the transport's already). So every half
// second the thread looks at what each connection has queued for its peer
// (SIOCOUTQ on the duplicate); one that has kept kUnreadBytes or more
// queued for `unread_limit` is shut down (gRPC sees it end and lets its
// calls go; a client's socket buffer holds ~208 KiB, so nothing is stuck
// below that), and
// its uid's connections (not the operators': root's, hallocd's own) are
// refused for `cut_penalty`, so that reconnecting
// and filling the socket again cannot keep the threads. An honest client's
// gRPC library reads as bytes come; only a stopped process leaves them.
//
// Where the kernel cannot refuse fds at the sender (SO_PASSRIGHTS, 6.16+),
// gRPC gets each admitted connection through a StreamRelay
// (stream_relay.h), so that no fd a client attaches to its bytes reaches
// gRPC's reads, and refused connections are closed there too; so does a
// connection made before the listener refused fds (one that waited on a
// socket systemd handed over), which keeps what it queued then. While
// too many fds clients sent wait to be closed, no connection is accepted,
// and none of a uid with too many of its own.
#ifndef HALLOC_SERVICE_GRPC_LISTENER_H_
#define HALLOC_SERVICE_GRPC_LISTENER_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/connection_limits.h"
#include "service/control_peers.h"
#include "service/stream_relay.h"
#include "service/util/unix_listener.h"

namespace grpc {
class Server;
}

namespace halloc {

class GrpcListener {
 public:
  // OK to admit a connection from `uid` while `held` are open.
  using Admit = std::function<absl::Status(uid_t uid, ConnectionCounts held)>;

  // Starts accepting on `listener` (a listening SOCK_STREAM socket, made
  // non-blocking here) for `server`, which must outlive Stop(). Each
  // connection handed to the server is noted in `peers` (when given) with
  // its SO_PEERCRED.
  // With `connect_rate` (the policy's, asked at each accept), a uid's
  // connections past that rate are closed at accept (ConnectRate,
  // connection_limits.h), before anything costlier is done for them.
  static absl::StatusOr<std::unique_ptr<GrpcListener>> Start(
      UniqueFd listener, grpc::Server* server, Admit admit,
      std::shared_ptr<ControlPeers> peers = nullptr,
      std::function<ConnectRate::Limits()> connect_rate = nullptr);
  ~GrpcListener();  // Stop()

  // Stops accepting; connections already handed over stay the server's.
  // Call before the server's Shutdown. Idempotent.
  void Stop();

  // Connections open now: `uid`'s and all.
  ConnectionCounts held(uid_t uid) const;
  // Connections shut down since start for leaving what was sent them
  // unread (unread_limit), or by CutUid.
  uint64_t cut_total() const;
  // Connections closed at accept since start for coming faster than their
  // uid's rate.
  uint64_t rate_limited_total() const { return rate_limited_.load(std::memory_order_relaxed); }

  // Shuts down every connection of `uid` and refuses its new ones for
  // cut_penalty, as for unread bytes (a uid that floods gRPC with calls
  // past its limit: CallsPerUid). Nothing for the operators (root's tools,
  // hallocd's own uid). `why` goes in the log line.
  void CutUid(uid_t uid, absl::string_view why);

  // Relay every connection even where the kernel refuses fds at the sender
  // (on kernels from 6.16): hallocd's default (--control_relay), for the
  // relay's HTTP/2 guard (stream_relay.h). Read by Start.
  static bool relay_always;
  // How long a connection's queue to its peer may stay non-empty, and how
  // long its uid is refused afterwards (tests shorten them; read by Run).
  static absl::Duration unread_limit;
  static absl::Duration cut_penalty;
  static constexpr int kUnreadBytes = 64 * 1024;
  // Whether every connection goes through a StreamRelay.
  bool relaying() const { return relay_all_; }

 private:
  GrpcListener(UniqueFd listener, UniqueFd wake, UniqueFd ends, AcceptGuard accept_guard,
               grpc::Server* server, Admit admit, std::unique_ptr<StreamRelay> relay,
               bool relay_all, std::shared_ptr<ControlPeers> peers,
               std::function<ConnectRate::Limits()> connect_rate);
  // OK when `uid` may open one more connection now (its rate), else why
  // not, counted.
  absl::Status WithinRate(uid_t uid);
  // The relay for `conn` when fds may reach it (made at first need), else
  // nullptr.
  StreamRelay* RelayFor(int conn);
  // Closes a connection it does not serve: through `relay` (RelayFor's
  // answer, asked before the connection's option was set) when fds may be
  // queued on it, else here.
  void Refuse(UniqueFd conn, uid_t uid, StreamRelay* relay);
  // The same, after logging `why` (rate-limited per `uid`, the uid it is
  // held to) with its peer's pid.
  void RefuseSaying(UniqueFd conn, const ucred& cred, uid_t uid, StreamRelay* relay,
                    const absl::Status& why);
  void Run();
  // Accepts one connection (or, out of fds, pauses: accept_guard_).
  void AcceptOne();
  // Forgets the connections whose ends `ends_` reports.
  void Reap();
  // Takes a connection's duplicate out of `ends_` and closes it.
  void CloseDup(int dup);
  // Shuts down the connections whose peers left what was sent them unread
  // for unread_limit.
  void CutUnread(absl::Time now);
  // Until when `uid`'s connections are refused (InfinitePast: not).
  absl::Time CutUntil(uid_t uid) const;

  const UniqueFd listener_;
  const UniqueFd wake_;  // eventfd that stops Run()
  const UniqueFd ends_;  // epoll set of the duplicates
  AcceptGuard accept_guard_;  // out of fds: close the waiting one, pause
  grpc::Server* const server_;
  const Admit admit_;
  const std::shared_ptr<ControlPeers> peers_;
  const std::function<ConnectRate::Limits()> connect_rate_limits_;
  ConnectRate connect_rate_;  // Run's thread only
  std::atomic<uint64_t> rate_limited_{0};
  // Every connection through the relay (fds cannot be refused at the
  // sender); else only those that may still carry some. The relay outlives
  // Stop(), so that connections stay served while the server shuts down.
  const bool relay_all_;
  std::unique_ptr<StreamRelay> relay_;
  std::thread thread_;
  bool stopped_ = false;

  mutable absl::Mutex mu_;
  struct Conn {
    uid_t uid;
    // Since when its queue to its peer has held kUnreadBytes or more.
    absl::Time unread_since = absl::InfiniteFuture();
    bool cut = false;
  };
  // Shuts connection `dup` down and counts it; its uid is refused until
  // `now` + cut_penalty unless it is an operator's. Whether it was
  // penalised.
  bool CutLocked(int dup, Conn& conn, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Duplicate fd → its connection; and per uid, how many.
  absl::flat_hash_map<int, Conn> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uid_t, uint32_t> per_uid_ ABSL_GUARDED_BY(mu_);
  // Uids refused until then: one of their connections was cut.
  absl::flat_hash_map<uid_t, absl::Time> cut_until_ ABSL_GUARDED_BY(mu_);
  uint64_t cut_total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_unread_check_ = absl::InfinitePast();  // Run's thread only
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_GRPC_LISTENER_H_
