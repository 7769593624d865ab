// hallocctl: command-line client of hallocd. Run `hallocctl --help`.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "clients/cli/commands.h"
#include "clients/cli/flags.h"
#include "clients/cli/safe_output.h"
#include "clients/cpp/halloc/client.h"

namespace {

constexpr char kIntro[] = R"(talk to hallocd, the halloc buffer allocator.

Usage: hallocctl [flags] COMMAND [ARGS]

Every hallocctl run is its own client session: buffers it allocates or
imports are released when it exits, unless --hold keeps it running. So the
commands that act on buffers the session holds run inside one:

  hallocctl session      reads commands from stdin, one per line, each with
                         its own flags, in one session until EOF or Ctrl-C:
      allocate --size 65536 --name frame     -> buffer 7 ...
      share 7 --uid 1000 --access read        -> grant 3 buffer 7 ... token T
      set-metadata 7 dataspace 0x10c10000
      revoke 3
      release 7
  Each command's output ends with one line: "ok", or "error EXIT: message"
  (EXIT: the exit code it would have had). The session exits with the code
  of the first command that failed, 0 if none did.

  hallocctl import T [--map-check] [--hold]   (another process, the peer)

Commands:
)";

constexpr char kExitCodes[] = R"(
Exit codes: 0 ok; 1 hallocd refused (the message says why and which rule);
2 bad command line; 3 cannot reach hallocd (or it is shutting down, or did
not answer in time); 4 no such buffer, grant or grant token (NOT_FOUND);
5 the output could not be written (a full disk, a closed pipe).

--json output is protobuf's JSON mapping of the reply (allocator.proto), one
object per line: field names as in the .proto, zero values included, 64-bit
integers as strings.

)";

// Prints why `status` failed, on stderr, and returns its exit code.
int Report(const absl::Status& status) {
  if (status.ok()) return halloc::cli::kExitOk;
  std::cerr << "hallocctl: " << halloc::cli::ErrorText(status);
  if (halloc::cli::IsUsageError(status)) std::cerr << "; see hallocctl --help";
  std::cerr << "\n";
  return halloc::cli::ExitCodeFor(status);
}

bool WantsHelp(const std::vector<std::string>& tokens) {
  for (const std::string& t : tokens) {
    if (t == "--") break;
    if (t == "--help" || t == "-help" || t == "-h") return true;
  }
  return !tokens.empty() && tokens[0] == "help";
}

}  // namespace

int Main(int argc, char** argv) {
  namespace cli = halloc::cli;
  const std::vector<std::string> tokens(argv + 1, argv + argc);
  if (WantsHelp(tokens)) {
    std::cout << kIntro << cli::CommandsHelp() << kExitCodes << cli::FlagsHelp();
    return cli::kExitOk;
  }
  absl::StatusOr<std::vector<std::string>> words = cli::ParseArgs(tokens);
  if (!words.ok()) return Report(words.status());
  if (words->empty()) {
    std::cerr << kIntro << cli::CommandsHelp() << kExitCodes;
    return cli::kExitUsage;
  }
  const cli::Command* command = cli::FindCommand((*words)[0]);
  if (command == nullptr) {
    return Report(cli::UsageError("unknown command '" + (*words)[0] + "'"));
  }
  const std::vector<std::string> args(words->begin() + 1, words->end());
  if (absl::Status s = cli::CheckCommand(*command, args.size(), /*in_session=*/false);
      !s.ok()) {
    return Report(s);
  }
  if (command->name == "policy") {
    if (args[0] != "check") return Report(cli::UsageError("usage: policy check FILE"));
    return cli::PolicyCheck(args[1], std::cout, std::cerr, cli::UnitUser());
  }
  const cli::Options options = cli::Options::FromFlags();
  // What can be judged without hallocd is, before reaching it: exit 2, and
  // no session opened for a command that could never run.
  if (absl::Status s = cli::CheckCall(*command, cli::Call{args, options, std::cout}); !s.ok()) {
    return Report(s);
  }
  // Before connecting: gRPC's threads inherit the mask.
  if (options.hold || command->name == "watch") cli::BlockStopSignals();
  halloc::ConnectOptions connect;
  connect.control_socket = options.control_socket;
  connect.broker_socket = options.broker_socket;
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(connect);
  if (!client.ok()) {
    std::cerr << "hallocctl: cannot reach hallocd: " << cli::OneLine(client.status().message())
              << "\n";
    return cli::kExitUnreachable;
  }
  cli::Session session(*std::move(client));
  if (command->name == "session") {
    const bool prompt = ::isatty(STDIN_FILENO) == 1 && ::isatty(STDOUT_FILENO) == 1;
    return session.RunScript(std::cin, std::cout, prompt);
  }
  return Report(session.Run(*command, args, options, std::cout));
}

int main(int argc, char** argv) {
  // A closed pipe (`hallocctl watch | head`) is a failed write, exit 5, not
  // death by SIGPIPE (141) before anything could say so. Before Main: gRPC's
  // threads are started there.
  ::signal(SIGPIPE, SIG_IGN);
  // Whatever the daemon that answered sent, printed without its control
  // characters (safe_output.h).
  halloc::cli::SafeOutput safe_out(std::cout), safe_err(std::cerr);
  const int code = Main(argc, argv);
  // Output that did not reach its file (a full disk, a closed pipe) must
  // not pass for done: `hallocctl stats --prometheus > f.$$ && mv` would
  // install a cut file.
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "hallocctl: cannot write the output: " << std::strerror(errno) << "\n";
    return code == halloc::cli::kExitOk ? halloc::cli::kExitOutput : code;
  }
  return code;
}
