// Raw HTTP/2 for tests that play a gRPC client misbehaving below gRPC's
// API (windows it never opens, bytes it never reads), and for tests of
// what reads frames (h2_guard_test, stream_relay_test).
#ifndef HALLOC_SERVICE_HTTP2_TESTING_H_
#define HALLOC_SERVICE_HTTP2_TESTING_H_

#include <cstdint>
#include <string>

namespace halloc::http2_testing {

constexpr uint8_t kData = 0x0, kHeaders = 0x1, kRstStream = 0x3, kSettings = 0x4, kPing = 0x6,
                  kWindowUpdate = 0x8, kContinuation = 0x9;
constexpr uint8_t kEndStream = 0x1, kAck = 0x1, kEndHeaders = 0x4;
constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// One frame (RFC 9113 §4.1).
inline std::string Frame(uint8_t type, uint8_t flags, uint32_t stream,
                         const std::string& payload) {
  std::string f;
  const uint32_t n = payload.size();
  for (int shift : {16, 8, 0}) f.push_back(static_cast<char>((n >> shift) & 0xff));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  for (int shift : {24, 16, 8, 0}) f.push_back(static_cast<char>((stream >> shift) & 0xff));
  return f + payload;
}

// A frame of `length` filler bytes ('x'): for what reads frame headers
// only.
inline std::string SizedFrame(uint8_t type, uint8_t flags, uint32_t stream, uint32_t length) {
  return Frame(type, flags, stream, std::string(length, 'x'));
}

// HPACK: a literal header field without indexing, new name, no Huffman.
inline std::string Literal(const std::string& name, const std::string& value) {
  return std::string(1, '\0') + static_cast<char>(name.size()) + name +
         static_cast<char>(value.size()) + value;
}

// A unary gRPC call of `path` ("/pkg.Service/Method") with an empty
// request, on stream `stream`; `more`: further header fields (Literal).
inline std::string EmptyCall(const std::string& path, uint32_t stream,
                             const std::string& more = "") {
  const std::string headers = Literal(":method", "POST") + Literal(":scheme", "http") +
                              Literal(":path", path) + Literal(":authority", "hallocd") +
                              Literal("content-type", "application/grpc") +
                              Literal("te", "trailers") + more;
  return Frame(kHeaders, kEndHeaders, stream, headers) +
         Frame(kData, kEndStream, stream, std::string(5, '\0'));
}

}  // namespace halloc::http2_testing

#endif  // HALLOC_SERVICE_HTTP2_TESTING_H_
