// Protocol constants shared by hallocd and its clients (one definition, so
// the two sides cannot drift apart). The protocol itself is documented in
// proto/halloc/v1/allocator.proto and proto/halloc/v1/broker.proto.
#ifndef HALLOC_SERVICE_UTIL_PROTOCOL_H_
#define HALLOC_SERVICE_UTIL_PROTOCOL_H_

#include <cstdint>

namespace halloc {

// Broker protocol version (Hello.version).
inline constexpr uint32_t kBrokerProtocolVersion = 2;
// gRPC metadata key carrying the session token (Welcome.session_token).
inline constexpr char kSessionMetadataKey[] = "halloc-session";

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_PROTOCOL_H_
