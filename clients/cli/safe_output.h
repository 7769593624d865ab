// SafeOutput: hallocctl's stdout and stderr, with every control character
// its text could carry escaped.
//
// Much of what hallocctl prints comes from the daemon it reached (names,
// reasons, paths, messages), and the daemon is whatever listens on the
// path it was given: root's hallocctl run with a user's HALLOC_*_SOCKET
// (sudo -E) reached a user's fake daemon, whose replies cleared root's
// terminal and forged lines. hallocd validates names and escapes paths
// itself, but hallocctl does not rely on who answers: every byte below
// 0x20 but newline and tab, DEL, the C1 controls (U+0080-U+009F, UTF-8
// C2 80-9F: ESC's 8-bit forms) and the bidirectional overrides and
// isolates (U+202A-U+202E, U+2066-U+2069) it prints as \xNN escapes, and so
// every byte that is not part of a whole UTF-8 character (a raw 8-bit C1
// control, a sequence cut short even by a flush). hallocctl's own text
// holds none of them; --json output escapes them itself (JsonTerminalSafe),
// as JSON can.
#ifndef HALLOC_CLIENTS_CLI_SAFE_OUTPUT_H_
#define HALLOC_CLIENTS_CLI_SAFE_OUTPUT_H_

#include <ostream>
#include <streambuf>
#include <string>

#include "absl/strings/string_view.h"

namespace halloc::cli {

// `text` as SafeOutput would print it.
std::string TerminalSafe(absl::string_view text);
// `text` (a daemon's: a name, a reason, a message) fit for one line or
// column of hallocctl's text: newlines and tabs as \n and \t. SafeOutput
// lets them through for hallocctl's own text; in a fake daemon's name they
// would forge lines ("ok") or columns.
std::string OneLine(absl::string_view text);
// `json` (valid UTF-8, as protobuf's JSON printer writes it) with the
// characters SafeOutput would escape written as JSON's \uXXXX instead
// (they occur only inside strings there), so that it stays valid JSON
// through SafeOutput: protobuf leaves U+2066 and the like as they are.
std::string JsonTerminalSafe(absl::string_view json);

// For its lifetime, what `stream` prints goes through TerminalSafe (held
// back at most until a character's last byte).
class SafeOutput : private std::streambuf {
 public:
  explicit SafeOutput(std::ostream& stream);
  ~SafeOutput() override;
  SafeOutput(const SafeOutput&) = delete;
  SafeOutput& operator=(const SafeOutput&) = delete;

 private:
  int_type overflow(int_type c) override;
  std::streamsize xsputn(const char* s, std::streamsize n) override;
  int sync() override;
  // Writes what of pending_ is whole characters (all of it at `flush`).
  bool Drain(bool flush);

  std::ostream& stream_;
  std::streambuf* const target_;
  std::string pending_;
};

}  // namespace halloc::cli

#endif  // HALLOC_CLIENTS_CLI_SAFE_OUTPUT_H_
