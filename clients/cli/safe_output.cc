#include "clients/cli/safe_output.h"

#include <cstdint>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace halloc::cli {
namespace {

void Escape(std::string& out, absl::string_view bytes) {
  for (unsigned char c : bytes) absl::StrAppendFormat(&out, "\\x%02x", c);
}

// How many bytes the UTF-8 sequence led by `lead` has; 0 for a byte that
// leads none (a continuation byte on its own, 0xc0, 0xc1, 0xf5-0xff).
size_t SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

bool Continues(char c) { return (static_cast<unsigned char>(c) & 0xc0) == 0x80; }

// The code point of a whole, valid-looking sequence.
uint32_t CodePoint(absl::string_view seq) {
  const auto b = [&](size_t i) {
    return static_cast<uint32_t>(static_cast<unsigned char>(seq[i]));
  };
  switch (seq.size()) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1f) << 6) | (b(1) & 0x3f);
    case 3:
      return ((b(0) & 0x0f) << 12) | ((b(1) & 0x3f) << 6) | (b(2) & 0x3f);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3f) << 12) | ((b(2) & 0x3f) << 6) | (b(3) & 0x3f);
  }
}

// Whether code point `cp` drives a terminal rather than shows: C0 but
// newline and tab, DEL, C1, the bidirectional overrides and isolates.
bool IsTerminalControl(uint32_t cp) {
  return (cp < 0x20 && cp != '\n' && cp != '\t') || (cp >= 0x7f && cp <= 0x9f) ||
         (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

// How a character that drives a terminal is written: its bytes as \xNN,
// or (inside JSON strings) its code point as \uXXXX.
enum class Style { kText, kJson };

// Appends the safe form of `text`; returns how many bytes it took: all of
// them with `all`, else all but a sequence its end may yet complete. A
// byte that is not part of a whole UTF-8 sequence is escaped on its own
// as \xNN (a raw 8-bit C1 control among them).
size_t Convert(absl::string_view text, bool all, Style style, std::string& out) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t want = SequenceLength(static_cast<unsigned char>(text[i]));
    size_t have = want == 0 ? 0 : 1;
    while (have > 0 && have < want && i + have < text.size() && Continues(text[i + have])) {
      ++have;
    }
    if (want > 0 && have < want && i + have == text.size() && !all) break;  // may yet come
    if (want == 0 || have < want) {
      Escape(out, text.substr(i, 1));
      ++i;
      continue;
    }
    const absl::string_view seq = text.substr(i, want);
    if (!IsTerminalControl(CodePoint(seq))) {
      out.append(seq.data(), seq.size());
    } else if (style == Style::kJson) {
      absl::StrAppendFormat(&out, "\\u%04x", CodePoint(seq));
    } else {
      Escape(out, seq);
    }
    i += want;
  }
  return i;
}

}  // namespace

std::string OneLine(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"\n", "\\n"}, {"\t", "\\t"}});
}

std::string TerminalSafe(absl::string_view text) {
  std::string out;
  Convert(text, /*all=*/true, Style::kText, out);
  return out;
}

std::string JsonTerminalSafe(absl::string_view json) {
  std::string out;
  Convert(json, /*all=*/true, Style::kJson, out);
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
  const size_t taken = Convert(pending_, flush, Style::kText, out);
  pending_.erase(0, taken);
  const auto size = static_cast<std::streamsize>(out.size());
  return target_->sputn(out.data(), size) == size;
}

}  // namespace halloc::cli
