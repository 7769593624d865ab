// The fds hallocd has sent that their receivers have not read yet.
//
// The kernel charges an fd in flight on a Unix socket to the sending
// process's user until the receiver takes it, and past RLIMIT_NOFILE of
// them refuses that user's every further fd send (ETOOMANYREFS) unless it
// has CAP_SYS_RESOURCE, which hallocd's unit does not grant. So a client
// that asks for fds and never reads its broker socket (Import of a buffer
// it holds is free and repeatable) would, with enough connections, stop
// hallocd handing fds to anyone. UnreadFds keeps each uid (and everyone
// together) well below that: a send that would go past its uid's share is
// refused with RESOURCE_EXHAUSTED, for that uid only.
//
// What is unread is bounded from what the kernel says, not guessed:
// SIOCOUTQ on the daemon's end of a connection counts the memory of the
// records its peer has not taken yet, each at least its payload plus
// kMinRecordBytes, so only the latest records sent on it whose least
// footprints fit in that (and their fds) can be unread; at 0, none. (A
// large reply, 64 buffers' worth, counts as the one record it is, not as
// its size over kMinRecordBytes.) A connection remembers the fd counts of its recent
// records, and its count is cut down that way before a send that would
// not fit otherwise (a busy client always has a reply or two in flight:
// its count is those, not everything since it was last seen idle). A connection that ends while fds sent on it are unread (its
// peer shut down only its writing side, or hallocd closed it) keeps
// counting: its socket is retired here, held open until the peer reads or
// closes, and Sweep() lets it go then.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_UNREAD_FDS_H_
#define HALLOC_SERVICE_UNREAD_FDS_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/util/clock.h"

namespace halloc {

class UnreadFds {
 public:
  // Looking at sockets costs a syscall each, so a uid over its share has
  // its connections looked at no more often than every kRefreshEvery (and
  // all of them for the total likewise): a client at its limit that keeps
  // asking costs hallocd a refusal, not a scan per request. `now` is the
  // clock (tests pass their own).
  static constexpr absl::Duration kRefreshEvery = absl::Milliseconds(10);
  UnreadFds(uint64_t per_uid, uint64_t total,
            std::function<absl::Time()> now = MonotonicNow)
      : per_uid_(per_uid), total_limit_(total), now_(std::move(now)) {}
  // Limits from hallocd's own RLIMIT_NOFILE (what the kernel compares
  // with): half of it for everyone, an eighth of that per uid (at least 64).
  static uint64_t DefaultTotal();
  static uint64_t DefaultPerUid();

  // A connection of `uid` on `sock` (the daemon's end, which the caller
  // keeps open until Retire): its handle.
  uint64_t Open(int sock, uid_t uid);
  // Before sending `n` fds in a record of `bytes` payload on connection
  // `handle`: reserves them. When they would not fit, this connection's
  // count is first refreshed from its socket, then (if that was not
  // enough) those of all that uid's connections (all connections, for the
  // total), unless that was done less than kRefreshEvery ago: one whose
  // peer took everything counts 0 again. RESOURCE_EXHAUSTED, naming the
  // unread count and what to do, when they still do not fit.
  // The reservation is pending until Sent or Unreserve says how its send
  // went: until then the socket's queue says nothing about it, so it stays
  // counted and is not matched against what is queued (a pending record
  // would otherwise be taken for read by a refresh racing its send).
  absl::Status Reserve(uint64_t handle, uint64_t n, uint64_t bytes = 0);
  // The send of `n` reserved fds (`bytes` as reserved) went out: from now
  // on the socket's queue tells whether they were read. Sent calls on one
  // connection must come in the order of its sends (the queue's order,
  // which Trim counts back in), whatever order they were reserved in:
  // SocketFdChannel makes each send and its Sent under one lock.
  void Sent(uint64_t handle, uint64_t n, uint64_t bytes = 0);
  // The send of `n` reserved fds (`bytes` as reserved) failed: they are not
  // in flight.
  void Unreserve(uint64_t handle, uint64_t n, uint64_t bytes = 0);
  // The connection ends. With fds unread, `sock` (its socket, handed over)
  // stays open here and keeps counting until its peer has read them or
  // closed; else it is closed.
  void Retire(uint64_t handle, UniqueFd sock);
  // Called (without the lock) whenever Retire keeps a socket open, on
  // whichever thread dropped the connection's last user: tells the
  // sweeper to start looking (Broker: a wake-up of its loop).
  void OnRetire(std::function<void()> f) {
    absl::MutexLock lock(&mu_);
    on_retire_ = std::move(f);
  }
  // Lets go of retired connections whose fds were all read (or whose peer
  // closed). Returns how many are still retired.
  size_t Sweep();

  uint64_t unread(uid_t uid) const;
  uint64_t total() const;
  // Retired connections still held open: of `uid`, or of everyone.
  uint32_t retired(uid_t uid) const;
  uint32_t retired() const;

 private:
  // The least memory the kernel charges for one record on a Unix socket
  // beyond its payload (an sk_buff and its shared info are more).
  static constexpr uint64_t kMinRecordBytes = 512;
  struct Entry {
    uint16_t fds;
    uint32_t bytes;  // payload
    bool pending;    // reserved, its send not done yet
  };
  struct Conn {
    int sock;
    uid_t uid;
    uint64_t unread = 0;
    // The records with fds sent (or being sent) and possibly unread,
    // oldest first (their fds sum to `unread`).
    std::deque<Entry> recent;
    UniqueFd retired;  // set once retired: the socket kept open
  };
  // Bytes queued on `sock` that its peer has not taken; 0 on error.
  static uint64_t Queued(int sock);
  // Forgets the records of `c` its peer must have taken (SIOCOUTQ).
  void Trim(Conn& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The newest pending entry of `c` for `n` fds and `bytes` (entries of one
  // size are alike), or end.
  static std::deque<Entry>::iterator PendingEntry(Conn& c, uint64_t n, uint64_t bytes);
  void Take(Conn& c, uint64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Fits(uid_t uid, uint64_t n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Trims every connection (of `uid`, or all when nullopt).
  void Refresh(std::optional<uid_t> uid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t per_uid_;
  const uint64_t total_limit_;
  const std::function<absl::Time()> now_;
  mutable absl::Mutex mu_;
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Conn> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uid_t, uint64_t> by_uid_ ABSL_GUARDED_BY(mu_);
  uint64_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uid_t, uint32_t> retired_by_uid_ ABSL_GUARDED_BY(mu_);
  uint32_t retired_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void()> on_retire_ ABSL_GUARDED_BY(mu_);
  // When each uid's connections (and all, for the total) were last looked at.
  absl::flat_hash_map<uid_t, absl::Time> refreshed_ ABSL_GUARDED_BY(mu_);
  absl::Time refreshed_all_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UNREAD_FDS_H_
