#include "clients/cli/safe_output.h"

#include <cstdint>

#include "absl/strings/str_format.h"

namespace halloc::cli {
namespace {

void Escape(std::string& out, absl::string_view bytes) {
  for (unsigned char c : bytes) absl::StrAppendFormat(&out, "\\x%02x", c);
}

// How many bytes the UTF-8 sequence led by `lead` has (1 for anything that
// does not lead one: it is judged on its own).
size_t SequenceLength(unsigned char lead) {
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 1;
}

bool Dangerous(absl::string_view seq) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(seq[i]); };
  if (seq.size() == 1) return (b(0) < 0x20 && b(0) != '\n' && b(0) != '\t') || b(0) == 0x7f;
  if (seq.size() == 2) return b(0) == 0xc2 && b(1) >= 0x80 && b(1) <= 0x9f;  // C1
  if (seq.size() == 3 && b(0) == 0xe2) {
    const uint32_t cp = ((b(0) & 0x0fu) << 12) | ((b(1) & 0x3fu) << 6) | (b(2) & 0x3fu);
    return (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
  }
  return false;
}

// Appends the safe form of `text`'s whole characters; returns how many
// bytes it took (all but an unfinished sequence at the end, unless `all`).
size_t Convert(absl::string_view text, bool all, std::string& out) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t want = SequenceLength(static_cast<unsigned char>(text[i]));
    if (i + want > text.size() && !all) break;
    size_t n = 1;  // the sequence, cut short where a byte does not continue it
    while (n < want && i + n < text.size() &&
           (static_cast<unsigned char>(text[i + n]) & 0xc0) == 0x80) {
      ++n;
    }
    const absl::string_view seq = text.substr(i, n);
    if (Dangerous(seq)) {
      Escape(out, seq);
    } else {
      out.append(seq.data(), seq.size());
    }
    i += n;
  }
  return i;
}

}  // namespace

std::string TerminalSafe(absl::string_view text) {
  std::string out;
  Convert(text, /*all=*/true, out);
  return out;
}

SafeOutput::SafeOutput(std::ostream& stream) : stream_(stream), target_(stream.rdbuf(this)) {}

SafeOutput::~SafeOutput() {
  Drain(/*flush=*/true);
  target_->pubsync();
  stream_.rdbuf(target_);
}

SafeOutput::int_type SafeOutput::overflow(int_type c) {
  if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
  pending_.push_back(traits_type::to_char_type(c));
  return Drain(false) ? c : traits_type::eof();
}

std::streamsize SafeOutput::xsputn(const char* s, std::streamsize n) {
  pending_.append(s, static_cast<size_t>(n));
  return Drain(false) ? n : 0;
}

int SafeOutput::sync() { return Drain(true) && target_->pubsync() == 0 ? 0 : -1; }

bool SafeOutput::Drain(bool flush) {
  std::string out;
  const size_t taken = Convert(pending_, flush, out);
  pending_.erase(0, taken);
  const auto size = static_cast<std::streamsize>(out.size());
  return target_->sputn(out.data(), size) == size;
}

}  // namespace halloc::cli
