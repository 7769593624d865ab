// How hallocd's fd table is shared out, so that no local user can exhaust
// it (or hallocd's memory) and lock every client out: how many connections
// it takes from one uid and in all (the policy's `sessions`), and how many
// buffers it holds at once. Each socket hallocd serves counts its own
// connections against the connection limits: the broker socket's sessions
// and the control socket's gRPC connections (a client holds one of each).
// Buffers get what the connections, the backend's stock and hallocd's own
// work leave.
#ifndef HALLOC_SERVICE_CONNECTION_LIMITS_H_
#define HALLOC_SERVICE_CONNECTION_LIMITS_H_

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/policy/policy.h"
#include "service/util/fd_limit.h"
#include "service/util/subordinate_uids.h"
#include "service/util/token_bucket.h"

namespace halloc {

// Root and hallocd's own uid may exceed the total limit by this much, so an
// administrator can still connect to a daemon at its limit; they have no
// per-uid limit.
inline constexpr uint32_t kAdminConnectionReserve = 16;
// sessions.max_per_uid when the policy leaves it 0.
inline constexpr uint32_t kDefaultMaxConnectionsPerUid = kDefaultSessionsPerUid;

// fds one control connection costs hallocd: 2 (gRPC's and the duplicate
// that sees its end), 4 through the relay (kernels before 6.16: the
// client's socket and the relay's end of the pair too). hallocd sets it
// once its listener knows (GrpcListener::relaying()); 2 until then.
// Read by DefaultMaxConnections and BufferRoom. Thread-safe.
void SetControlConnectionFds(uint32_t fds);
uint32_t ControlConnectionFds();

// sessions.max_total when the policy leaves it 0: what makes both sockets
// full take half of this process's fd limit (at least 16; 4096 when
// unlimited), the rest being the buffers'. A broker connection costs two
// fds (the socket and the peer's pidfd), a control connection
// ControlConnectionFds(): an eighth of the limit, a twelfth through the
// relay.
uint32_t DefaultMaxConnections();

// fds hallocd keeps for its own work beyond connections, buffers and the
// backend's stock: listening sockets, epoll and event fds, gRPC's own, the
// metrics server's connections (16), the watches of released memory (16),
// the user namespaces of the containers NamespaceRoot remembers (64,
// peer_identity.h), files it reads.
inline constexpr uint64_t kHallocdOwnFds = 256;

// How many buffers hallocd may hold at once (each is an fd in it), of
// `fd_limit` (0: infinite, and then no limit, 0): what is left after both
// sockets' connections at `policy`'s limits (the administrators' reserve
// included), `stock_fds` (the most the backend stocks) and kHallocdOwnFds;
// never less than a quarter of `fd_limit`, the share the defaults leave.
// However many uids fill it, hallocd still accepts connections and
// releases.
uint64_t BufferRoom(const Policy& policy, uint64_t fd_limit, uint64_t stock_fds);

// Connections of one socket held now.
struct ConnectionCounts {
  uint32_t of_uid = 0;  // the connecting uid's
  uint32_t total = 0;
};

// Whether `uid` may open one more connection to a socket where `held` are
// open: OK, or RESOURCE_EXHAUSTED naming the limit and the policy field.
// `what` names the connections in the message ("broker connections").
// Root and hallocd's own uid: the operators, held to no per-uid limit,
// never refused after a cut connection, and shown every client's buffers
// and counters (List{all}, Dump, the whole of Stats).
bool IsOperatorUid(uid_t uid);

// The subuid(5) file ConnectRate keys by (/etc/subuid unless set: tests,
// hallocd's --subuid_file). Read by each ConnectRate made after. Thread-safe.
void SetSubordinateUidFile(std::string path);
std::string SubordinateUidFile();

absl::Status AdmitConnection(const Policy& policy, uid_t uid, ConnectionCounts held,
                             absl::string_view what);

// How fast each uid may open connections to one socket (the policy's
// sessions.connects_per_second): a bucket per uid (or per subordinate
// range's owner or slice, below) that refills at that rate
// and holds twice as many, or the uid's connection limit
// (sessions.max_per_uid) if that is more, so that a uid may always open
// all it may hold at once; one token a connection. Without it, a uid that
// connects and closes in a loop (some 10k connections a second from one
// process) made hallocd set each one up (pidfd, the /proc reads, a
// session or a gRPC transport) on the thread that also serves the broker's
// requests, and cut every other client's throughput to a third.
//
// A uid is judged as the kernel gives it (SO_PEERCRED), before anything
// costlier; the uid a user namespace's process is charged to is known only
// after (PinAndCharge: the pidfd and the /proc reads), and is judged then
// too (Admit again). A uid of a user's ranges in /etc/subuid
// (SubordinateUids) draws on one bucket with every uid of that user's
// ranges: a user connecting through the subordinate uids newuidmap lets
// it map is held at the first check as one, not as 65,536 uids with a
// bucket each. A uid of one of root's ranges (a container's) draws on one
// with its 65,536-uid slice. A container's uids are charged after as
// the uid its root is, listed or not (ContainerCharged), and judged again
// by that; once hallocd has read a container's map (a process of it
// connected), the uids of 65536 and up of its own block (not those its map
// shares from the host, whose owners connect from the host too) draw on
// that charge's bucket at the first check too (KnownContainerCharge): a
// container's 65,536 uids, of a listed range or not, are one bucket before
// their processes are looked at. Until then, uids a container maps from
// outside every listed range are a bucket each at the first check, held
// as one at the second.
// Buckets full again are forgotten (swept once the map has doubled since
// the last sweep), so it holds the uids that connected within the last few
// seconds, and at most as many again.
//
// Not thread-safe: one per accepting thread.
class ConnectRate {
 public:
  struct Limits {
    uint32_t per_second = kDefaultConnectsPerSecond;
    // As Of() makes it of a policy with the defaults.
    uint32_t burst = std::max(2 * kDefaultConnectsPerSecond, kDefaultMaxConnectionsPerUid);
  };
  // `policy`'s (its defaults put in).
  static Limits Of(const Policy& policy);

  // Reads subordinate uid ranges from SubordinateUidFile() as it is now.
  ConnectRate();

  // OK when a connection of `uid` may be set up at `now` (MonotonicNow()'s
  // time) within `limits`, and counted; RESOURCE_EXHAUSTED naming the rate
  // when the uid has used its burst, and then, given `retry_after`, how
  // soon it will have room again. `what` names the socket's connections in
  // the message. Operators (IsOperatorUid) are not limited.
  absl::Status Admit(Limits limits, uid_t uid, absl::Time now, absl::string_view what,
                     absl::Duration* retry_after = nullptr);
  // The subordinate uid ranges it keys by, as of `now` (valid until the
  // next call): what the same listener charges peers by (PinAndCharge).
  const SubordinateUids& subordinate_uids(absl::Time now) { return subordinate_.At(now); }
  // Whom a refusal of `uid` at this check (before ChargedUid can look) is
  // charged to (log lines, foreign-fd lanes): its bucket's uid, the uid
  // itself, the first uid of its owner's lowest range, or its slice's
  // first for root's; never root or hallocd's uid.
  uid_t RefusedAs(uid_t uid, absl::Time now);
  // Whether `a` and `b` draw on one bucket at `now` (one uid, one user's
  // subordinate ranges, or one slice of root's): a uid charged as another
  // (ChargedUid) is judged again only where they do not.
  bool SameBucket(uid_t a, uid_t b, absl::Time now);
  // Buckets held now.
  size_t uids_tracked() const { return buckets_.size(); }

 private:
  using Bucket = TokenBucket;
  // The bucket `uid` draws on: its own (the uid), its range's owner's (a
  // hash of the name above 2^63), or its slice of root's range (1 << 32 |
  // the slice's first uid).
  uint64_t BucketOf(uid_t uid, absl::Time now);
  // Drops the buckets that are full at `now` under `limits`.
  void Sweep(const Limits& limits, absl::Time now);

  SubordinateUidsFile subordinate_;
  absl::flat_hash_map<uint64_t, Bucket> buckets_;
  // Swept once it holds this many (twice what the last sweep left).
  size_t sweep_at_ = 64;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_CONNECTION_LIMITS_H_
