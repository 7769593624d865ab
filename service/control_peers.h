// Who is at the other end of each control connection hallocd handed gRPC,
// so that a gRPC call's session token is good only from its own uid.
//
// gRPC cannot see a Unix socket's peer credentials (grpc/grpc#28755), but
// hallocd accepts every control connection itself (grpc_listener.h) and
// reads SO_PEERCRED there; it hands gRPC the connected fd, which gRPC names
// "fd:N" (ServerContext::peer()). The listener notes each connection's
// credentials under that fd number as it hands it over; the gRPC adaptor
// looks a call's connection up. An fd number is reused only after gRPC
// closed the connection, which it does once no call on it runs; the next
// connection handed over with that number replaces the entry.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_CONTROL_PEERS_H_
#define HALLOC_SERVICE_CONTROL_PEERS_H_

#include <sys/socket.h>

#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace halloc {

class ControlPeers {
 public:
  // Connection `fd`, about to be handed to gRPC, has peer `cred`, whose
  // per-uid limits are charged to `charged` (its user namespace owner's
  // uid: ChargedUid in peer_identity.h; nullopt: cred.uid), and which
  // started at `start` (ProcessStart: with cred.pid, which process it was;
  // nullopt: not known).
  void Set(int fd, const ucred& cred, std::optional<uid_t> charged = std::nullopt,
           std::optional<uint64_t> start = std::nullopt);
  // What Set noted of one connection.
  struct Connection {
    ucred cred;
    uid_t charged;  // the uid its per-uid limits are charged to
    // When the process that made it started (nullopt: not known).
    std::optional<uint64_t> start;
    uint64_t handover;  // which Set() noted it: 1, 2, ...
  };
  // The connection gRPC calls `peer` ("fd:N"), everything about it from one
  // look-up; nullopt for any other name, or an fd never handed over.
  std::optional<Connection> Of(absl::string_view peer) const;

  // The uid a call on connection `peer` counts against in per-uid limits
  // (StreamSlots): its charged uid; one shared uid (-1) for a connection
  // `peers` does not know; nullopt without `peers` (an in-process server,
  // held to its totals alone).
  static std::optional<uid_t> LimitUid(const ControlPeers* peers, absl::string_view peer);

  // What a call on connection `peer` is judged by, from one look-up (both
  // of the same connection, should gRPC close it and hand its number to
  // another meanwhile): its LimitUid, and a name no other connection
  // shares (gRPC's "fd:N" names every connection later handed over with
  // that number too, so the name adds which handover it was: "fd:N#7";
  // `peer` itself for a connection `peers` does not know, or without
  // `peers`).
  struct Call {
    std::optional<uid_t> limit_uid;
    std::string connection;
  };
  static Call CallOn(const ControlPeers* peers, absl::string_view peer);

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<int, Connection> by_fd_ ABSL_GUARDED_BY(mu_);
  uint64_t handovers_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_CONTROL_PEERS_H_
