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

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "service/policy/policy.h"
#include "service/util/fd_limit.h"

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
// files it reads.
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

absl::Status AdmitConnection(const Policy& policy, uid_t uid, ConnectionCounts held,
                             absl::string_view what);

}  // namespace halloc

#endif  // HALLOC_SERVICE_CONNECTION_LIMITS_H_
