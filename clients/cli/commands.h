// hallocctl's commands: the table of them (arguments, where each may run),
// the exit codes, and Session, which runs them on one connected Client.
//
// A hallocctl process is one session of hallocd: whatever it allocates or
// imports is released when it exits. So the commands that act on buffers
// the session holds (share, release, revoke, set-metadata) run only inside
// `hallocctl session`, which reads commands from stdin, one per line, in one
// session; each command's output there is followed by one status line, `ok`
// or `error EXIT: message` (EXIT being the exit code it would have had).
#ifndef HALLOC_CLIENTS_CLI_COMMANDS_H_
#define HALLOC_CLIENTS_CLI_COMMANDS_H_

#include <sys/types.h>

#include <cstddef>
#include <istream>
#include <map>
#include <optional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "clients/cli/flags.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::cli {

// Exit codes, by what the caller does next. ExitCodeFor is the one mapping
// from a status.
enum ExitCode : int {
  kExitOk = 0,
  // hallocd refused (policy, descriptor, quota, backend; the message says
  // why and names the rule): change the request or the policy.
  kExitRefused = 1,
  // Bad command line (unknown command or flag, missing or malformed
  // argument): nothing was sent.
  kExitUsage = 2,
  // hallocd cannot be reached, is shutting down (UNAVAILABLE) or did not
  // answer in time (DEADLINE_EXCEEDED): try again later.
  kExitUnreachable = 3,
  // No such buffer, grant or grant token, as far as this session can see
  // (NOT_FOUND): it was released or revoked, or was never yours.
  kExitNotFound = 4,
  // What it printed did not all reach stdout (a full disk, a closed pipe):
  // whatever was written is not to be trusted.
  kExitOutput = 5,
};
int ExitCodeFor(const absl::Status& status);
// "NOT_FOUND: Describe: no buffer 9 held"; a usage error's message alone.
std::string ErrorText(const absl::Status& status);

class Session;

// What a command gets: its arguments (after the name), the flags' values,
// and where to print.
struct Call {
  absl::Span<const std::string> args;
  const Options& options;
  std::ostream& out;
};

struct Command {
  enum class Scope { kAnywhere, kCommandLineOnly, kSessionOnly };
  absl::string_view name;
  absl::string_view synopsis;  // its arguments and flags
  absl::string_view summary;
  size_t min_args;
  size_t max_args;
  Scope scope;
  // nullptr: run by main itself (policy check needs no daemon; session
  // reads stdin).
  absl::Status (*run)(Session& session, const Call& call);
  // What of the call can be judged before connecting (a descriptor, an
  // id, an interval): a bad one is a usage error, and no session is
  // opened for it. nullptr: nothing.
  absl::Status (*check)(const Call& call) = nullptr;
};

// nullptr for an unknown name.
const Command* FindCommand(absl::string_view name);
// A UsageError unless `num_args` arguments fit and the command may run
// here (on the command line, or inside a session).
absl::Status CheckCommand(const Command& command, size_t num_args, bool in_session);
// `command`'s own check of `call` (Command::check), before any connection.
absl::Status CheckCall(const Command& command, const Call& call);
// Every command with its synopsis and summary, for --help.
std::string CommandsHelp();

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it
// starts later (gRPC's), so that only WaitForStopSignal takes them. Call
// before connecting, and only for commands that wait (--hold, watch).
void BlockStopSignals();
// Waits for SIGINT or SIGTERM for at most `timeout` (InfiniteDuration():
// for ever); true if one came.
bool WaitForStopSignal(absl::Duration timeout);

// Whose judgement `policy check` gives of exe paths and of the file's
// place: a user's uid, gid and name.
struct Judge {
  uid_t uid;
  gid_t gid;
  std::string name;
};
// The user hallocd.service runs hallocd as ("hallocd"), if it exists here.
std::optional<Judge> UnitUser();

// `policy check FILE`, offline: "FILE: OK, N client rules: ..." and 0, or
// the error as FILE:LINE:COLUMN: message on `err` and 1. Notes on `err`
// for a valid file: rules that match by executable alone, exe rules that
// match nothing or that another user could steer, and a file hallocd would
// not read where it is. Those last judgements are hallocd's as user `as`
// (its files count as hallocd's own, a directory closed to it closes what
// is behind it) when run by root; by another user they are that user's,
// and a note says so.
int PolicyCheck(const std::string& file, std::ostream& out, std::ostream& err,
                const std::optional<Judge>& as = std::nullopt);

// One session of hallocd and the buffers it holds.
class Session {
 public:
  explicit Session(Client client) : client_(std::move(client)) {}

  // Runs one command whose arguments passed CheckCommand.
  absl::Status Run(const Command& command, absl::Span<const std::string> args,
                   const Options& options, std::ostream& out);

  // `hallocctl session`: reads commands from `in`, one per line (words
  // split at blanks; blank lines and lines starting with '#' skipped), each
  // with its own flags on top of the command line's, runs them, and ends
  // each one's output with "ok" or "error EXIT: message". `prompt`: print
  // "hallocctl> " before each line (for a terminal). Returns the exit code
  // of the first command that failed, 0 if none did.
  int RunScript(std::istream& in, std::ostream& out, bool prompt);

  Client& client() { return client_; }
  // The buffers this session holds, with their fds, by id.
  std::map<uint64_t, Buffer>& held() { return held_; }

 private:
  absl::Status RunLine(absl::Span<const std::string> tokens, std::ostream& out);

  Client client_;
  std::map<uint64_t, Buffer> held_;
};

}  // namespace halloc::cli

#endif  // HALLOC_CLIENTS_CLI_COMMANDS_H_
