// hallocctl's flags, and the one parser that reads them: from the command
// line and from each line of a `hallocctl session`.
//
// The flags are Abseil flags (typed values, defaults, --help text), but they
// are parsed here rather than by absl::ParseCommandLine, which exits 1 on an
// unknown flag or a bad value: hallocctl reserves 1 for "hallocd refused"
// and reports every bad command line as exit code 2.
#ifndef HALLOC_CLIENTS_CLI_FLAGS_H_
#define HALLOC_CLIENTS_CLI_FLAGS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace halloc::cli {

// The flags' values, read once per command.
struct Options {
  std::string control_socket;
  std::string broker_socket;
  // Descriptor (allocate, supported).
  uint64_t size = 0;
  std::string format;
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t layers = 1;
  std::string usage;
  uint32_t count = 1;
  std::string name;
  // Behaviour.
  bool hold = false;
  bool all = false;
  bool json = false;
  bool prometheus = false;  // stats
  bool map_check = false;
  // share: the peer (uid -1: not given) and the grant's CPU rights ("":
  // the sharer's own).
  int64_t uid = -1;
  std::string client;
  std::string access;
  // watch.
  bool dump = false;
  absl::Duration interval = absl::Seconds(1);
  uint32_t iterations = 0;

  // The current values of the flags.
  static Options FromFlags();
};

// A bad command line: INVALID_ARGUMENT marked as ours, so that it is never
// confused with hallocd's own INVALID_ARGUMENT (exit code 2, not 1).
absl::Status UsageError(absl::string_view message);
bool IsUsageError(const absl::Status& status);

// Sets the flags in `tokens` and returns the other words, in order.
// `--name=value`, `--name value`, `--bool`, `--nobool`, one or two dashes;
// `--` ends the flags; a word starting with '-' and a digit ("-1") is a
// word, not a flag. Flags named in `refused` (those a session line may not
// set) are a UsageError, as are unknown flags, missing values and values
// that do not parse.
absl::StatusOr<std::vector<std::string>> ParseArgs(
    absl::Span<const std::string> tokens,
    absl::Span<const absl::string_view> refused = {});

// Puts hallocctl's flags back, when it ends, to the values they had when it
// began (what absl::FlagSaver does, without its log line per flag): each
// session line's flags last for that line only.
class FlagScope {
 public:
  FlagScope();
  ~FlagScope();
  FlagScope(const FlagScope&) = delete;
  FlagScope& operator=(const FlagScope&) = delete;

 private:
  std::vector<std::pair<absl::CommandLineFlag*, std::string>> saved_;
};

// "  --name  help (default: value)" for every hallocctl flag, sorted.
std::string FlagsHelp();

}  // namespace halloc::cli

#endif  // HALLOC_CLIENTS_CLI_FLAGS_H_
