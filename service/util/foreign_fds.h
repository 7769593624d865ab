// ForeignFds: closes, on threads of their own, fds a client sent where none
// were asked for.
//
// Before Linux 6.16 nothing stops a client from attaching fds to any record
// it sends hallocd's broker (SO_PASSRIGHTS is 6.16's), and whoever drops an
// fd's last reference runs its file's release: a TCP socket's, with
// SO_LINGER and data its peer does not take, waits out the linger time (any
// length the sender picks); closing an fd runs its file's flush (a FUSE
// file's waits for its server). On the broker thread either would hold up
// every client, and a held broker is what the watchdog restarts hallocd
// for, ending every session. So the broker receives such fds with room for
// all of them (ReceiveRawRecord: none dropped on its thread) and hands them
// here (Close), and likewise the socket of a connection that ends with
// such a record still queued (StopReceiving, Drain).
//
// The threads close with a ReleaseTicker armed, which cuts short every
// interruptible wait of a release: a lingering socket (closed here, or
// queued on a socket closed here, however deep) costs one tick, not its
// linger time. A drained socket's queued fds are dropped unopened
// (received with no room for them), so they are released but never
// flushed: a drain does not wait for its sender (save in a release's
// uninterruptible wait, which only files that need privilege to make
// have: a fuseblk or virtiofs mount's). What can still wait as long as
// its sender likes is the close of an fd the broker received: a FUSE
// file's flush. So the work runs in lanes, one per uid for its closes and
// one for its drains, each lane in order on one thread at a time, the
// lanes in turn on up to max_threads threads (started as lanes are ready
// and no thread is idle). A sender whose file holds a thread
// holds its own lane and that thread; everyone else's lanes go on, until
// max_threads senders of distinct uids hold them all.
//
// What waits is counted per connection (the broker's key), per uid and in
// all: the broker and the control relay read nothing more from a
// connection while its fds wait, nor from any connection of a uid with
// max_per_uid or more waiting, and admit no new connection of that uid;
// with max_total waiting in all they accept no connection until some are
// closed (connections already open are served on). What hallocd keeps
// open for senders thus stays bounded, by max_total plus what the
// connections it admitted can end with.
//
// Thread-safe. When a thread is held at destruction, the threads outlive
// the object: they close what they were given, then end.
#ifndef HALLOC_SERVICE_UTIL_FOREIGN_FDS_H_
#define HALLOC_SERVICE_UTIL_FOREIGN_FDS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// Ends what `sock` (a connected SOCK_SEQPACKET or SOCK_DGRAM Unix socket)
// can receive: shutdown(SHUT_RD), after which its peer's sends fail. Then
// takes the queued records that carry no fds off it, up to the first that
// carries some. True when such a record is left: then the socket must be
// drained off this thread (ForeignFds::Drain), for closing it here would
// drop those fds here. Never installs an fd nor drops one: it peeks with
// room for the sender's credentials only (turning SO_PASSCRED on), so that
// fds show as a cut control message.
bool StopReceiving(int sock);

class ForeignFds {
 public:
  static constexpr int kDefaultThreads = 8;
  static absl::StatusOr<std::unique_ptr<ForeignFds>> Create(
      uint64_t max_per_uid, uint64_t max_total, int max_threads = kDefaultThreads);
  // Whether releases are bounded (read by Create): sockets closed
  // abortively, ticks armed. Tests turn it off to hold a thread with a
  // lingering TCP socket, the one file they can make whose close waits:
  // the stand-in for a FUSE file whose flush waits for its server.
  static bool bound_releases;
  ~ForeignFds();
  ForeignFds(const ForeignFds&) = delete;
  ForeignFds& operator=(const ForeignFds&) = delete;

  // Closes `fds`, sent on connection `key` by `uid`, on a thread.
  void Close(uint64_t key, uid_t uid, std::vector<UniqueFd> fds);
  // On a thread: receives every record still queued on `sock` (a socket
  // StopReceiving was called on; a reference of its own, a dup say) with
  // no room for fds, which the kernel thus drops unopened, then closes it.
  // Counts as one fd of `uid`. A stream socket's out-of-band byte is read
  // inline (SO_OOBINLINE), not left behind.
  void Drain(uint64_t key, uid_t uid, UniqueFd sock);

  // Whether anything of connection `key` waits to be closed.
  bool Waiting(uint64_t key) const;
  // Whether `uid` has max_per_uid or more fds waiting.
  bool OverLimit(uid_t uid) const;
  // Whether max_total or more wait in all.
  bool Full() const;
  uint64_t waiting_of(uid_t uid) const;
  // An eventfd, readable once a thread finished with something since the
  // last Acknowledge(): then ask Waiting and OverLimit again.
  int ready_fd() const;
  void Acknowledge();

 private:
  struct State;
  explicit ForeignFds(std::shared_ptr<State> state);
  void Add(uint64_t key, uid_t uid, std::vector<UniqueFd> fds, bool drain);

  const std::shared_ptr<State> state_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_FOREIGN_FDS_H_
