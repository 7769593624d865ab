#include "service/h2_guard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace halloc {
namespace {

// RFC 9113, section 6.
constexpr uint8_t kHeaders = 0x1;
constexpr uint8_t kRstStream = 0x3;
constexpr uint8_t kPushPromise = 0x5;
constexpr uint8_t kContinuation = 0x9;
constexpr uint8_t kEndHeaders = 0x4;

}  // namespace

absl::StatusOr<uint32_t> H2Guard::Feed(absl::string_view bytes) {
  if (refused_) return absl::ResourceExhaustedError("HTTP/2 stream already refused");
  uint32_t resets = 0;
  while (!bytes.empty()) {
    if (preface_left_ > 0) {
      const size_t n = std::min<size_t>(preface_left_, bytes.size());
      preface_left_ -= static_cast<uint32_t>(n);
      bytes.remove_prefix(n);
      continue;
    }
    if (payload_left_ > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(payload_left_, bytes.size()));
      payload_left_ -= n;
      bytes.remove_prefix(n);
      continue;
    }
    const size_t n = std::min<size_t>(sizeof(header_) - header_have_, bytes.size());
    std::copy_n(bytes.data(), n, header_ + header_have_);
    header_have_ += static_cast<uint32_t>(n);
    bytes.remove_prefix(n);
    if (header_have_ < sizeof(header_)) break;
    header_have_ = 0;
    const uint32_t length = uint32_t{header_[0]} << 16 | uint32_t{header_[1]} << 8 | header_[2];
    const uint8_t type = header_[3];
    if (type == kRstStream) ++resets;
    if (absl::Status s = Frame(length, type, header_[4]); !s.ok()) {
      refused_ = true;
      return s;
    }
    payload_left_ = length;
  }
  return resets;
}

absl::Status H2Guard::Frame(uint32_t length, uint8_t type, uint8_t flags) {
  const bool opens = type == kHeaders || type == kPushPromise;
  // Anything but a CONTINUATION ends an open block: gRPC refuses that as a
  // protocol error (RFC 9113 6.10); the bounds are for blocks it would read.
  if (opens || type != kContinuation) {
    in_block_ = false;
    block_bytes_ = 0;
    block_frames_ = 0;
  }
  if (!opens && !(type == kContinuation && in_block_)) return absl::OkStatus();
  block_bytes_ += length;
  ++block_frames_;
  if (block_bytes_ > kMaxHeaderBlockBytes || block_frames_ > kMaxHeaderBlockFrames) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "an HTTP/2 header block of more than ", kMaxHeaderBlockBytes, " bytes or ",
        kMaxHeaderBlockFrames, " frames (", block_bytes_, " bytes in ", block_frames_, " so far)"));
  }
  in_block_ = (flags & kEndHeaders) == 0;
  return absl::OkStatus();
}

}  // namespace halloc
