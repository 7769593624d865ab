// Protocol constants and default socket paths shared by hallocd and its
// clients (one definition, so
// the two sides cannot drift apart). The protocol itself is documented in
// proto/halloc/v1/allocator.proto and proto/halloc/v1/broker.proto.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_PROTOCOL_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace halloc {

// Broker protocol version (Hello.version).
inline constexpr uint32_t kBrokerProtocolVersion = 2;
// gRPC metadata key carrying the session token (Welcome.session_token).
inline constexpr char kSessionMetadataKey[] = "halloc-session";

// Largest request hallocd reads on either path: a broker record, and a
// gRPC message (hallocd's --grpc_max_message_bytes default; gRPC's own is
// 4 MiB). Far above any real request but a Release of thousands of ids.
inline constexpr size_t kMaxRequestBytes = 64 * 1024;
// Ids per ReleaseRequest of a ReleaseMany stream: 10 bytes each at most
// (a varint), well within kMaxRequestBytes.
inline constexpr size_t kReleaseIdsPerRequest = 6000;

// Where hallocd's sockets are when nobody says otherwise: these files in
// DefaultSocketDir(). Clients also honour the environment variables.
inline constexpr char kControlSocketFile[] = "control.sock";
inline constexpr char kBrokerSocketFile[] = "broker.sock";
inline constexpr char kControlSocketEnv[] = "HALLOC_CONTROL_SOCKET";
inline constexpr char kBrokerSocketEnv[] = "HALLOC_BROKER_SOCKET";

// `given` when not empty, else the socket path environment variable `env`
// names (kControlSocketEnv, kBrokerSocketEnv), else "". The environment is
// not read in a program that runs set-user-ID, set-group-ID or with file
// capabilities (AT_SECURE, secure_getenv(3)): it is its caller's, who
// could point it at a socket of theirs. So too for XDG_RUNTIME_DIR below.
std::string NamedSocketPath(const std::string& given, const char* env);

// A CPU as BrokerRequest.cpu carries it: the CPU number plus one, 0 when
// unknown (`cpu` < 0, as sched_getcpu reports a failure).
uint32_t CpuHint(int cpu);
// The hint for the CPU the calling thread runs on now.
uint32_t CurrentCpuHint();

// Where hallocd binds its sockets by default: $XDG_RUNTIME_DIR/halloc for
// a user other than root with XDG_RUNTIME_DIR set (a hallocd of its own),
// else /run/halloc (root's ignores its environment: `sudo -E` could carry
// a user's directory over).
std::string DefaultSocketDir();

// Where a client looks for the sockets nobody named: $XDG_RUNTIME_DIR/halloc
// (as DefaultSocketDir says it) when either socket file is there (a hallocd
// of the user's own), else /run/halloc, where the machine's hallocd
// listens. One directory for both: a session's token (from the broker
// socket) never goes to a control socket found somewhere else.
std::string ClientSocketDir();

// The two sockets a client connects to: `control` and `broker` where named
// (NamedSocketPath: given, else the environment); where one alone is
// named, the other's file (kControlSocketFile, kBrokerSocketFile) in its
// directory; where neither is, both in ClientSocketDir(). Always one
// hallocd's pair: a broker socket named alone, with the control socket
// taken from the default directory, sent the session's gRPC calls to
// another hallocd (UNAUTHENTICATED) and its Stats to one it never meant.
struct SocketPaths {
  std::string control;
  std::string broker;
};
SocketPaths ClientSocketPaths(const std::string& control, const std::string& broker);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_PROTOCOL_H_
