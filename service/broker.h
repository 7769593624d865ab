// The broker: the SOCK_SEQPACKET Unix socket that carries fds, whose
// connections are the clients' sessions, and which carries the fast-path
// requests (Allocate, Import, Share, Revoke, Release, Describe, SetMetadata,
// IsSupported). The protocol is documented in proto/halloc/v1/broker.proto.
//
// One thread runs it; while it serves one client at a time it moves to that
// client's CPU (util/cpu_follower.h). Large allocations (64 MiB or more) go
// to a second thread (util/work_queue.h), so that committing them does not
// hold up everyone else's requests, as do those of 64 KiB or more (or of
// several buffers) of a uid past its share of this thread
// (kBudgetedBytes); live revokes go to a
// third (revoke_lane_). For each accepted connection it reads
// SO_PEERCRED, pins the peer with a pidfd, notes which file it executes and sends a Hello with a
// challenge; the session opens only when the connecting process itself answers (the kernel stamps
// every record with its sender: SO_PASSCRED). When the peer closes the connection (or dies), the
// session ends and everything it held is released.
//
// Abuse it withstands: connections over the policy's per-uid or total limit
// are refused with a reason; a connection that never verifies is closed
// after 10 s; when hallocd runs out of fds, a reserve fd lets it accept and
// close the excess connection instead of spinning, and accepting pauses
// briefly; every log line an outsider can trigger is rate-limited, and
// client strings in it are escaped; fds sent to it are refused at the
// sender (Linux 6.16+), or else received and closed on a thread of their
// own (util/foreign_fds.h), as are connections that end with some still
// queued, so no client's file (a FUSE file's flush, a lingering TCP
// socket's release) runs on the broker thread, and the connection that
// sent them is not read again until they are closed (nor any of its uid's
// once too many wait); fds sent and not read are counted per uid
// (unread_fds.h), so a client that does not read cannot use up what the
// kernel lets hallocd have in flight. Connection, fd, slow-lane and quota
// limits charge the uid a peer belongs to (ChargedUid, peer_identity.h;
// Identity::account_uid for quotas, for every request on the connection):
// a user's subordinate uids in a user namespace are that user.
#ifndef HALLOC_SERVICE_BROKER_H_
#define HALLOC_SERVICE_BROKER_H_

#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/broker.pb.h"
#include "service/allocator.h"
#include "service/connection_limits.h"
#include "service/unread_fds.h"
#include "service/util/cpu_follower.h"
#include "service/util/foreign_fds.h"
#include "service/util/log_limit.h"
#include "service/util/time_budget.h"
#include "service/util/unix_listener.h"
#include "service/util/work_queue.h"

namespace halloc {

class Broker {
 public:
  // Binds `path` (mode `mode`) and starts the broker thread.
  static absl::StatusOr<std::unique_ptr<Broker>> Start(const std::string& path,
                                                       mode_t mode,
                                                       Allocator* core);
  // Serves `listener`, a listening SOCK_SEQPACKET Unix socket someone else
  // bound to `path` (systemd socket activation): made non-blocking and
  // SO_PASSCRED here; `path` names it in logs and is left alone at Stop.
  // FAILED_PRECONDITION when `listener` is not such a socket.
  static absl::StatusOr<std::unique_ptr<Broker>> Serve(UniqueFd listener,
                                                       const std::string& path,
                                                       Allocator* core);
  ~Broker();  // Stops the thread and ends every session.

  // Stops accepting and ends every session. Idempotent.
  void Stop();

  // Connections refused since start for coming faster than their uid's
  // rate (ConnectRate, connection_limits.h).
  uint64_t rate_limited_total() const { return rate_limited_.load(std::memory_order_relaxed); }

  // How long a connection may take to verify (tests shorten it).
  static absl::Duration verify_timeout;
  // Whether the broker thread follows the CPU of the client it serves
  // (BrokerRequest.cpu, service/util/cpu_follower.h). Read by Start and
  // Serve.
  static bool follow_client_cpu;
  // A lone client quiet for this long is no longer followed (tests that
  // check the following lengthen it: a starved test thread must not look
  // like a pause).
  static absl::Duration lone_pause;

  // Whether fds sent to the broker are refused at the sender where the
  // kernel can (SO_PASSRIGHTS, 6.16+). Tests turn it off to take the path
  // of older kernels (received, closed on a thread of their own). Read by
  // Start and Serve.
  static bool refuse_fds_at_sender;
  // Fds sent by one uid that may wait to be closed before none of its
  // connections is read nor a new one admitted; fds of everyone that may
  // wait before no connection is accepted (util/foreign_fds.h). Counted
  // after each record, whose fds are taken whole (one carries up to 253,
  // SCM_MAX_FD): a uid may so leave up to 63 + 253 waiting.
  static constexpr uint64_t kMaxForeignFdsPerUid = 64;
  static constexpr uint64_t kMaxForeignFds = 4096;

  // Unread fds one uid may have (0: UnreadFds::DefaultPerUid(), from the
  // fd limit). Read by Start and Serve.
  static uint64_t max_unread_fds_per_uid;

  // Fast-path allocations of this many bytes or more (all their buffers;
  // an image's as its layout has it) are made on the slow lane: a pool
  // miss commits every page, about 250 µs per MiB here, so 64 MiB inline
  // would hold every other client up ~16 ms, and 4 GiB about a second.
  // What may wait there, in all and per uid (more: the request waits, its
  // connection unread, until there is room; per uid, not per connection,
  // since a uid may hold sessions.max_per_uid connections; the
  // connection's charged uid, whoever sent the request).
  static constexpr uint64_t kSlowLaneBytes = uint64_t{64} << 20;
  // Below that, allocations of this many bytes or more (each buffer as
  // the whole pages it takes; a pool miss commits ~250 µs per MiB), and
  // those of more than one buffer (a memfd made for each), are made inline
  // only while their uid has taken less than inline_allowed of the broker
  // thread's time within inline_window; past it, on the slow lane too,
  // until the window ends: one uid sending 63 MiB requests on every
  // connection it may hold would otherwise take the thread ~16 ms a
  // request, turn after turn. Every allocation made inline is timed into
  // its uid's share, whatever its size (with 1 MiB here and only those
  // timed, requests of 1 MiB less a page took the thread as long, untimed:
  // another uid's p50 went from 26 µs to 4-5 ms). A single buffer under
  // this costs about what a plain request does (a memfd, at most 16 pages
  // committed) and always stays here; epoll takes connections in turn.
  // Tests may change the two durations before Start.
  static constexpr uint64_t kBudgetedBytes = uint64_t{64} << 10;
  static absl::Duration inline_window;
  static absl::Duration inline_allowed;
  // What a record costs this thread to parse is the sender's to choose up
  // to the record limit: 64 KiB of empty unknown fields (or of empty crop
  // rectangles) take ~250 µs, a whole plain request ~10 µs. Records longer than
  // kTimedParseBytes are timed as they are parsed; a uid whose parsing took
  // parse_allowed within parse_window (counted as TimeBudget does) is not
  // read, on any of its connections, until that window ends. Real requests
  // are a few hundred bytes (a Release of 6,000 ids, ~50 KB packed, parses
  // in ~20 µs), so none is ever timed on the fast path. Tests may change
  // the two durations before Start.
  static constexpr size_t kTimedParseBytes = 4096;
  static absl::Duration parse_window;
  static absl::Duration parse_allowed;
  static constexpr size_t kSlowLaneQueue = 64;
  static constexpr size_t kSlowLanePerUid = 4;

  // A refusal's reply: its status and message, the message valid UTF-8
  // (BrokerReply.message is a proto3 string) and at most
  // kMaxReplyMessageBytes of it.
  static v1::BrokerReply ErrorReply(uint64_t request_id, const absl::Status& status);
  static constexpr size_t kMaxReplyMessageBytes = 1024;
  // The record `reply` goes out as: a BrokerFrame carrying it or, when that
  // would not fit in one record (kMaxRecordBytes), carrying a
  // RESOURCE_EXHAUSTED reply to the same request instead: every request
  // is answered.
  static std::string ReplyRecord(v1::BrokerReply reply);

  // The CPU the broker thread is held on (following a client), or -1.
  int held_cpu() const { return held_cpu_.load(std::memory_order_relaxed); }
  // Handshake deadlines queued (live handshakes' and stale ones not pruned
  // yet), as of the last accepted connection.
  size_t queued_deadlines() const { return queued_deadlines_.load(std::memory_order_relaxed); }

 private:
  // One accepted connection: first a handshake, then a session.
  struct Conn {
    uint64_t key = 0;
    // The connection; the session's fd channel once verified (it owns the
    // socket, so the fd lives while any session reference does).
    std::shared_ptr<SocketFdChannel> channel;
    ucred peer{};
    // Whom per-uid limits charge: ChargedUid (peer_identity.h).
    uid_t charged_uid = 0;
    // Identity::maps_hallocd_uid (ChargedPeer).
    bool maps_hallocd_uid = false;
    // Pins the peer; shared with its session (SessionProcess), with when
    // it started.
    SharedFd pidfd;
    std::optional<uint64_t> start;
    std::string exe;
    std::optional<FileId> exe_file;
    std::string challenge;
    absl::Time deadline;
    std::shared_ptr<Session> session;  // set once verified
    // Not read from (out of the epoll set) while fds it sent wait to be
    // closed, or those of its uid are over kMaxForeignFdsPerUid, or while
    // `held` waits, or while a Revoke of its is on the revoke lane.
    bool paused = false;
    // Its Revokes posted to the revoke lane and not yet made (the lane's
    // thread counts them down). Until they are, nothing more is read from
    // it: its later requests are served after the revoke, as they would
    // be inline (a Release of the revoked buffer first would leave the
    // views of importers that let go uncut), and its end is seen after it
    // (a session closed first would leave the revoke undone: "session
    // closed").
    std::shared_ptr<std::atomic<int>> revoking = std::make_shared<std::atomic<int>>(0);
    // A request sent to a lane (an Allocate to the slow lane, a live
    // Revoke to the revoke lane) that found its uid's place there taken:
    // it waits for room (RetryHeld) instead of failing, its connection
    // unread.
    struct Held {
      v1::BrokerRequest req;
      Identity caller;
    };
    std::optional<Held> held;
    int sock() const { return channel->fd(); }
  };

  Broker(Allocator* core, UniqueFd listener, UniqueFd epoll, UniqueFd wake,
         AcceptGuard accept_guard, std::unique_ptr<ForeignFds> foreign_fds,
         SocketFile file);
  // Starts the thread on a bound, listening socket.
  // `file`: the socket file bound here (removed at Stop), or none.
  static absl::StatusOr<std::unique_ptr<Broker>> Launch(UniqueFd listener, SocketFile file,
                                                        Allocator* core);
  void Run();
  void Accept();
  // Whether uid may open one more connection; the reason when it may not.
  absl::Status Admit(uid_t uid) const;
  // Tells a connection being accepted why it is refused (`why`, a reply
  // record, with `retry_after` when it passes by itself), logs it against
  // `charged` and closes it.
  void RefuseAtAccept(UniqueFd conn, const ucred& cred, uid_t charged, const absl::Status& why,
                      absl::Duration retry_after = absl::ZeroDuration());
  // Whether `uid` (the connection's own, or the one it is charged to) is
  // within `limits` (ConnectRate); if not, `conn` is refused and counted.
  bool RateAdmits(const ConnectRate::Limits& limits, uid_t uid, const ucred& cred, UniqueFd& conn);
  void OnReadable(uint64_t key);
  // Handles one request record; false when the connection must close.
  bool Handle(Conn& conn, Record rec);
  bool Verify(Conn& conn, const ucred& sender, const v1::BrokerRequest& req);
  // A fast-path Allocate and its answer (on the broker thread, or on the
  // slow lane's for a large one: kSlowLaneBytes). Without `may_wait` (the
  // broker thread) it answers nothing and returns false when the request
  // must wait for released memory to be freed: post it to the slow lane.
  bool ServeAllocate(Session& session, const Identity& caller, const v1::BrokerRequest& req,
                     SocketFdChannel& conn, bool may_wait = true);
  // A fast-path Revoke and its answer (on the revoke lane's thread when
  // the backend revokes live).
  void ServeRevoke(Session& session, const Identity& caller, const v1::BrokerRequest& req,
                   SocketFdChannel& conn);
  // A fast-path Import and its answer: the reply and the fd in one record.
  void ServeImport(Session& session, const Identity& caller, const v1::BrokerRequest& req,
                   SocketFdChannel& conn);
  // A fast-path request of `caller`'s refused with `status`: audited, and
  // answered on `conn` (a warning, rate-limited, if that fails).
  void Refuse(const char* method, Session& session, const Identity& caller, uint64_t request_id,
              const absl::Status& status, SocketFdChannel& conn);
  // One reply record (no fds) on a connection; SendReply says how it went,
  // Reply and ReplyTo (a session's channel, from any thread) warn
  // (rate-limited) when it did not go.
  static absl::Status SendReply(SocketFdChannel& channel, v1::BrokerReply reply);
  void Reply(Conn& conn, v1::BrokerReply reply);
  void ReplyTo(Session& session, SocketFdChannel& conn, v1::BrokerReply reply);
  void Close(uint64_t key);
  // Closes `sock`, a connection's socket of `uid`, here, unless records
  // with fds are still queued on it: then they are dropped, and it closed,
  // by a foreign_fds_ drain.
  void CloseSocket(uint64_t key, uid_t uid, UniqueFd sock);
  // The same for a socket others still reference (a channel's): ended
  // here, and drained through a reference of foreign_fds_'s own only when
  // records with fds are queued.
  void EndShared(uint64_t key, uid_t uid, int sock);
  // Fds `conn` sent (a record's): closed off this thread; the connection
  // (and every one of its uid, once over the limit) not read until they are.
  void TakeForeignFds(Conn& conn, std::vector<UniqueFd> fds);
  void Pause(Conn& conn);
  // Pause() for every connection `uid` is charged for.
  void PauseUid(uid_t uid);
  // Where `req` (an Allocate or a Revoke) is served off this thread.
  WorkQueue& LaneOf(const v1::BrokerRequest& req) {
    return req.has_revoke() ? *revoke_lane_ : *slow_lane_;
  }
  // Sends `req` to its lane: posted there, or held (its connection
  // paused) while its uid's places there are taken.
  void ToLane(Conn& conn, const Identity& caller, v1::BrokerRequest req);
  // Posts `req` to its lane; an error reply if it is full.
  void Post(Conn& conn, const Identity& caller, v1::BrokerRequest req);
  // After a lane's task: posts held requests whose uid has room on their
  // lane now, and reads again from the connections nothing keeps paused
  // any more (those, and those whose Revoke was made).
  void RetryHeld();
  // A lane finished a task (written to lane_done_, from the lane's thread).
  void LaneDone();
  // Reads again from the paused connections whose fds were all closed.
  void ResumeCleared();
  // `uid` went past its parse share (parse_budget_): none of its
  // connections is read until `until`.
  void PauseForParsing(uid_t uid, absl::Time until);
  // Whether `uid`'s connections are paused for parsing at `now`.
  bool ParsePaused(uid_t uid) const { return parse_paused_.contains(uid); }
  // Ends the parse pauses due by `now` (and reads their connections again);
  // how long until the next one ends, or -1 ms for none.
  int ResumeParsed(absl::Time now);
  void ExpireHandshakes();
  // Drops the deadlines of connections that verified or closed.
  void PruneDeadlines();
  // Tells held_cpu() and ServingCpu() where the follower holds the thread.
  void Publish();
  // Takes the listener out of / back into the epoll set (accept_guard_
  // says when).
  void StopAccepting();
  void ResumeAccepting();
  // Rate-limited warning about something an outsider caused.
  void Warn(absl::string_view kind, const std::string& line);
  // The same for a line a uid's doing brought about: it takes that uid's
  // share of the kind's budget (LogLimiter::AllowFor), not all of it.
  void Warn(absl::string_view kind, uid_t uid, const std::string& line);

  Allocator* const core_;
  const UniqueFd listener_;
  const UniqueFd epoll_;
  const UniqueFd wake_;  // eventfd that stops Run()
  // Out of fds: closes the waiting connection and pauses accepting.
  AcceptGuard accept_guard_;
  SocketFile file_;  // bound by us: removed at Stop
  // Only touched by the broker thread (and Stop after join).
  absl::flat_hash_map<uint64_t, std::unique_ptr<Conn>> conns_;
  absl::flat_hash_map<uid_t, uint32_t> conns_per_uid_;
  // How fast each uid opens connections, judged before their setup.
  ConnectRate connect_rate_;
  std::atomic<uint64_t> rate_limited_{0};
  uint64_t next_key_ = 1;
  size_t handshakes_ = 0;
  // fds sent on the connections and not read yet, per uid (each session's
  // channel counts there); connections that ended with some unread, and
  // when to look at them again.
  const std::shared_ptr<UnreadFds> unread_fds_;
  absl::Time next_sweep_ = absl::InfinitePast();
  // An eventfd unread_fds_ writes whenever it keeps a connection's socket
  // (UnreadFds::OnRetire), from any thread: the loop then sweeps until
  // none is left. Shared: a channel may retire its socket after this
  // broker is gone.
  std::shared_ptr<UniqueFd> retired_wake_;
  // Fds clients sent unasked, closed on a thread of their own; the paused
  // connections' keys.
  std::unique_ptr<ForeignFds> foreign_fds_;
  // The broker thread's time each charged uid took making allocations
  // inline (kBudgetedBytes).
  TimeBudget inline_budget_;
  // Parse time of long records, per uid (kTimedParseBytes); the uids past
  // it, each with the end of its window: their connections stay paused.
  TimeBudget parse_budget_;
  absl::flat_hash_map<uid_t, absl::Time> parse_paused_;
  // refuse_fds_at_sender as Start or Serve read it (each accepted
  // connection is set to refuse too).
  bool refuse_fds_ = true;
  absl::flat_hash_set<uint64_t> paused_;
  // Handshake deadlines, earliest on top, with their connection's key
  // (stale once it verified or closed: skipped when they come up, and
  // pruned once they outnumber the live handshakes, so that connections
  // made and ended quickly cannot pile them up for verify_timeout).
  std::priority_queue<std::pair<absl::Time, uint64_t>,
                      std::vector<std::pair<absl::Time, uint64_t>>,
                      std::greater<>>
      deadlines_;
  bool accepting_ = true;
  LogLimiter log_limit_;
  bool follow_cpu_ = false;  // follow_client_cpu when started
  // Set by Run for the thread it runs on when follow_cpu_.
  std::optional<CpuFollower> follower_;
  // Connections with events in this turn of Run; the connection whose
  // fast-path requests came alone in their turns, and how many in a row.
  int clients_this_turn_ = 0;
  uint64_t last_client_ = 0;
  int lone_requests_ = 0;
  std::atomic<int> held_cpu_{-1};
  std::atomic<size_t> queued_deadlines_{0};
  // An eventfd the lanes write after each task (room for held requests:
  // Conn::held, among the paused connections). Before the lanes, which
  // write it from their threads (and are destroyed first).
  UniqueFd lane_done_;
  // Where large allocations are made (kSlowLaneBytes).
  std::unique_ptr<WorkQueue> slow_lane_;
  // A Revoke on a backend that revokes live (Backend::CanRevokeLive) cuts
  // off every view its grant's imports made, and the kernel zaps each
  // view's mappings before it answers: as many as the importers chose to
  // make, and the importer may be the revoker itself (20,000 mappings of
  // one view took the guest ~17 ms to zap). Those revokes run on a lane of
  // their own, shared as the slow lane is (kSlowLaneQueue in all,
  // kSlowLanePerUid per uid; past that the request waits, its connection
  // unread), so that no revoke holds this thread, and no allocation being
  // committed on the slow lane holds up a revoke. On other backends a
  // Revoke only forgets the grant, here.
  std::unique_ptr<WorkQueue> revoke_lane_;
  std::thread thread_;
  bool stopped_ = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BROKER_H_
