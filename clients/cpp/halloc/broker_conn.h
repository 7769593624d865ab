// The client side of hallocd's broker socket (proto/halloc/v1/broker.proto):
// connect, read the Hello, answer its challenge from this very process, read
// the Welcome. libhalloc uses it; so can tests and tools that speak the wire
// protocol themselves.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BROKER_CONN_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BROKER_CONN_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {

struct BrokerConnection {
  UniqueFd fd;
  v1::Hello hello;
  v1::Welcome welcome;
};

// Connects a SOCK_SEQPACKET Unix socket (close-on-exec) to `path`,
// waiting at most `timeout` for room in the listener's backlog (a daemon
// that does not accept, or a backlog other processes filled): then
// DEADLINE_EXCEEDED.
absl::StatusOr<UniqueFd> ConnectSeqpacket(const std::string& path,
                                          absl::Duration timeout = absl::InfiniteDuration());

// Connects and completes the handshake, both within `timeout`. A daemon
// that refuses the connection (e.g. too many connections from this uid)
// → its status; one that refuses it for now (this uid connected faster
// than its rate: BrokerReply.retry_after_ms) is asked again once it has
// room, within `timeout`.
absl::StatusOr<BrokerConnection> ConnectBroker(const std::string& path,
                                               absl::Duration timeout);

// The handshake on an already-connected socket: reads the Hello, sends
// Verify (request id 0), reads the Welcome.
absl::StatusOr<BrokerConnection> Handshake(UniqueFd fd, absl::Duration timeout);

// The next frame hallocd sends on broker socket `fd`, by `deadline` (a
// handshake keeps one for both its waits): DEADLINE_EXCEEDED past it,
// ReceiveRecord's error for a closed socket, UNAVAILABLE for a malformed
// frame. The fds the record carries go to `fds`, or without it are
// closed (the request path, client_impl.cc, reads its own records; this
// is for handshakes and tests).
absl::StatusOr<v1::BrokerFrame> NextFrame(int fd, absl::Time deadline,
                                          std::vector<UniqueFd>* fds = nullptr);

// A BrokerReply's status.
absl::Status ReplyStatus(const v1::BrokerReply& reply);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BROKER_CONN_H_
