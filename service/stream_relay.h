// StreamRelay: stands between the control socket's clients and gRPC where
// the kernel cannot refuse fds at the sender (before Linux 6.16, which has
// SO_PASSRIGHTS).
//
// No gRPC call carries fds, but a client may attach some to any byte of its
// stream, and gRPC's read would drop them: dropping an fd's last reference
// releases its file on the dropping thread, and a TCP socket with SO_LINGER
// and data its peer never takes holds that thread for the linger time (a
// few such fds held every gRPC thread). So each admitted connection is
// handed to gRPC as one end of a socket pair; this thread moves the bytes
// between the client and the other end, receiving the client's with room
// for every fd a record can carry, and hands any fds to ForeignFds, which
// closes them on a thread of its own. The connection is not read again
// until they are closed (nor any of its uid's once kMaxForeignFdsPerUid
// wait): a lingering socket holds up its sender alone.
//
// The bytes are moved as they are: gRPC sees the client's stream whole,
// ends included (a client's shutdown of its writing side reaches gRPC as
// one; gRPC ending the pair reaches the client as the connection ending).
// Each direction holds at most one read (64 KiB) that its destination has
// not taken yet, and reads no more until it has: the relay buffers nothing
// a client can grow. When one end goes (the client closes, or gRPC ends the
// connection), what it sent before is still queued: that is passed on to
// the other end first, as a direct connection would have delivered it
// (a client's last request, gRPC's last replies and GOAWAY), within a
// linger time (a client that stops reading does not keep its connection,
// which counts against its uid, for good). A client's out-of-band byte is
// read inline (SO_OOBINLINE): skipped, the kernel would drop its fds on
// this thread. A connection that ends is shut down and what it still
// queued read off (a few chunks here, the rest dropped unopened by a
// ForeignFds drain), so that closing it drops nothing here; only what
// carried fds counts against its uid.
//
// On the way to gRPC each client's frame headers are read (H2Guard): a
// connection that sends a header block past its bounds, or resets more
// streams than its uid's budget allows (kResetsPerSecond, kResetBurst, one
// budget for all of a uid's relayed connections, kept until it is whole
// again: a new connection gets none back), is ended before gRPC
// reads those bytes; Debian's gRPC (1.51) has no defence of its own
// (h2_guard.h).
//
// Identity is not affected: gRPC calls are tied to a session by its token
// (Authenticate), not by the control connection's peer, and admission has
// already judged the client's own SO_PEERCRED.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_STREAM_RELAY_H_
#define HALLOC_SERVICE_STREAM_RELAY_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/util/foreign_fds.h"
#include "service/util/token_bucket.h"

namespace halloc {

class StreamRelay {
 public:
  static constexpr uint64_t kMaxForeignFdsPerUid = 64;
  static constexpr uint64_t kMaxForeignFds = 4096;
  static constexpr size_t kChunk = 64 * 1024;
  // Chunks read off an ending connection here before the rest is left to
  // a ForeignFds drain (a client's send buffer holds about 208 KiB).
  static constexpr int kFinishChunks = 16;
  // How long what one end left queued may take to reach the other.
  static constexpr absl::Duration kLinger = absl::Seconds(5);
  // RST_STREAMs a uid's clients may send: a cancelled call costs one, and
  // a rapid-reset flood sent 14,000 a second on one connection.
  static constexpr double kResetsPerSecond = 500;
  static constexpr double kResetBurst = 2000;

  static absl::StatusOr<std::unique_ptr<StreamRelay>> Start(absl::Duration linger = kLinger);
  ~StreamRelay();  // Stop()

  // Relays `client` (a connected SOCK_STREAM Unix socket of `uid`) from now
  // on; returns the end to hand to gRPC (non-blocking, close-on-exec). On
  // an error `client` is ended as Discard ends it.
  absl::StatusOr<UniqueFd> Add(UniqueFd client, uid_t uid);
  // Ends `client` (refused, say) on the relay's thread: what it queued is
  // read off first, its fds to ForeignFds.
  void Discard(UniqueFd client, uid_t uid);

  // Connections being relayed now.
  size_t relayed() const;
  // Whether `uid` has kMaxForeignFdsPerUid fds waiting to be closed (admit
  // none of its connections), or everyone kMaxForeignFds (accept none).
  bool OverLimit(uid_t uid) const;
  bool Full() const;

  // Ends every connection and the thread. Idempotent.
  void Stop();

 private:
  struct Pipe;
  StreamRelay(UniqueFd epoll, UniqueFd wake, std::unique_ptr<ForeignFds> foreign,
              absl::Duration linger);
  void Run();
  // Ends the pipes whose linger is over; the epoll_wait timeout until the
  // next one's (-1: none).
  int EndLingered();
  // Takes what Add and Discard handed over.
  void Adopt();
  // An event on one end of pipe `key`; a hang-up (EPOLLHUP, EPOLLERR)
  // starts its linger.
  void OnEvent(uint64_t key, bool client_side, uint32_t events);
  // Moves what can move now, in both directions; false once it ended.
  bool Pump(Pipe& p);
  // That end of `p` hung up, or refused a write: nothing more goes to it,
  // and the other end's bytes are not read; it starts its linger. Once.
  void Gone(Pipe& p, bool client_side);
  // Fds `p`'s client sent: to foreign_; `p` (and its uid's, past the
  // limit) not read until they are closed.
  void TakeForeign(Pipe& p, std::vector<UniqueFd> fds);
  // The client's next bytes, read by `p`'s guard and its resets charged to
  // its uid's budget: an error (logged) where the connection is to end.
  absl::Status Guard(Pipe& p, absl::string_view bytes);
  // Which events each end waits for now.
  void Watch(Pipe& p);
  void End(uint64_t key);
  // Shuts `client` down, reads off what it still queued and closes it;
  // the rest on a foreign_ drain (no fd installed here) once fds come or
  // past kFinishChunks.
  void Finish(UniqueFd client, uint64_t key, uid_t uid);
  void ResumeCleared();

  const UniqueFd epoll_;
  const UniqueFd wake_;  // eventfd: Adopt (1) or Stop
  const std::unique_ptr<ForeignFds> foreign_;
  const absl::Duration linger_;
  std::thread thread_;
  bool stopped_ = false;

  mutable absl::Mutex mu_;
  struct Incoming {
    UniqueFd client;
    UniqueFd server;  // empty: discard the client
    uid_t uid;
  };
  std::vector<Incoming> incoming_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t relayed_ ABSL_GUARDED_BY(mu_) = 0;

  // Only the relay thread's.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Pipe>> pipes_;
  // Each uid's RST_STREAM budget (a token bucket), while it has pipes and
  // until it is whole again after its last.
  struct ResetBudget {
    TokenBucket tokens{kResetBurst, absl::Time()};
    int pipes = 0;
  };
  absl::flat_hash_map<uid_t, ResetBudget> resets_;
  absl::Time next_sweep_;
  // Pipes one of whose ends hung up, by the end of their linger (in order:
  // every linger is as long). A key may be gone from pipes_ already.
  std::deque<std::pair<absl::Time, uint64_t>> lingering_;
  uint64_t next_key_ = 1;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_STREAM_RELAY_H_
