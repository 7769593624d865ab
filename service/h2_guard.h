// H2Guard: reads the frame headers of an HTTP/2 client stream on its way
// to gRPC (StreamRelay) and refuses what Debian's gRPC (1.51) cannot bear:
//
// - A header block (HEADERS or PUSH_PROMISE and its CONTINUATION frames)
//   longer than kMaxHeaderBlockBytes or than kMaxHeaderBlockFrames frames.
//   gRPC 1.51's HPACK parser goes over what a block holds so far at each
//   CONTINUATION (CVE-2023-33953): a value trickled in one-byte frames kept
//   a gRPC thread busy for minutes, two such connections every thread (a
//   review helper's attack), and a block that never ended grew hallocd by
//   hundreds of MB past its gRPC memory quota. gRPC's own clients send a
//   call's headers in one frame of a few hundred bytes.
// - RST_STREAM frames, counted by the caller against the connection's uid
//   (Feed returns how many came): a client that opens streams and resets
//   them at once ("rapid reset", CVE-2023-44487) had gRPC 1.51 queue calls
//   no thread ran, at 300-450 MB/s, beyond every limit hallocd sets on its
//   calls (those act once a handler runs).
//
// Only frame headers are read (9 bytes each, after the 24-byte preface);
// payloads are skipped, never buffered: the guard holds a few bytes per
// connection whatever the client sends. What is not HTTP/2 is left to gRPC
// to refuse.
//
// Not thread-safe: one per connection, fed in stream order.
#ifndef HALLOC_SERVICE_H2_GUARD_H_
#define HALLOC_SERVICE_H2_GUARD_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace halloc {

class H2Guard {
 public:
  static constexpr uint32_t kMaxHeaderBlockBytes = 64 * 1024;
  static constexpr uint32_t kMaxHeaderBlockFrames = 16;

  // The next bytes the client sent: how many RST_STREAM frames began in
  // them, or RESOURCE_EXHAUSTED (why) once a header block broke a bound;
  // the connection is then to be ended, and every later Feed fails alike.
  absl::StatusOr<uint32_t> Feed(absl::string_view bytes);

 private:
  absl::Status Frame(uint32_t length, uint8_t type, uint8_t flags);

  uint32_t preface_left_ = 24;  // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
  uint8_t header_[9] = {};
  uint32_t header_have_ = 0;   // bytes of the next frame header read
  uint64_t payload_left_ = 0;  // of the current frame, to skip
  bool in_block_ = false;      // a header block is open (no END_HEADERS yet)
  uint64_t block_bytes_ = 0;
  uint32_t block_frames_ = 0;
  bool refused_ = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_H2_GUARD_H_
