// ForeignFds: closes, on a thread of its own, fds a client sent where none
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
// here, and likewise the socket of a connection that ends with such a
// record still queued (StopReceiving, Drain).
//
// The thread may be held for as long as a sender likes. What waits behind
// it is counted per connection (the broker's key) and per uid: the broker
// reads nothing more from a connection while its fds wait, nor from any
// connection of a uid with max_per_uid or more waiting. A sender holds up
// only itself, and what hallocd keeps open for it stays bounded: per uid,
// max_per_uid - 1 plus one record's worth (kKernelMaxFdsPerRecord), as the
// broker reads one record at a time.
//
// Thread-safe. When its thread is held at destruction, the thread outlives
// the object: it closes what it was given, then ends.
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
  static absl::StatusOr<std::unique_ptr<ForeignFds>> Create(uint64_t max_per_uid);
  ~ForeignFds();
  ForeignFds(const ForeignFds&) = delete;
  ForeignFds& operator=(const ForeignFds&) = delete;

  // Closes `fds`, sent on connection `key` by `uid`, on the thread.
  void Close(uint64_t key, uid_t uid, std::vector<UniqueFd> fds);
  // On the thread: receives every record still queued on `sock` (a socket
  // StopReceiving was called on; a reference of its own, a dup say),
  // closing their fds, then closes it. Counts as one fd of `uid`.
  void Drain(uint64_t key, uid_t uid, UniqueFd sock);

  // Whether anything of connection `key` waits to be closed.
  bool Waiting(uint64_t key) const;
  // Whether `uid` has max_per_uid or more fds waiting.
  bool OverLimit(uid_t uid) const;
  uint64_t waiting_of(uid_t uid) const;
  // An eventfd, readable once the thread finished with something since the
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
