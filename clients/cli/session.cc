// Running commands: exit codes, stop signals, and `hallocctl session`.
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "clients/cli/commands.h"
#include "clients/cli/safe_output.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::cli {

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  if (IsUsageError(status)) return kExitUsage;
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnreachable;
    default:
      return kExitRefused;
  }
}

std::string ErrorText(const absl::Status& status) {
  // One line: the message may be a fake daemon's.
  if (IsUsageError(status)) return OneLine(status.message());
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", OneLine(status.message()));
}

void BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

bool WaitForStopSignal(absl::Duration timeout) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int r;
    if (timeout == absl::InfiniteDuration()) {
      r = sigwaitinfo(&set, nullptr);
    } else {
      const timespec ts = absl::ToTimespec(std::max(deadline - absl::Now(), absl::ZeroDuration()));
      r = sigtimedwait(&set, nullptr, &ts);
    }
    if (r > 0) return true;
    if (errno == EAGAIN) return false;  // timed out; EINTR: wait on
  }
}

absl::Status Session::Run(const Command& command, absl::Span<const std::string> args,
                          const Options& options, std::ostream& out) {
  if (command.run == nullptr) {
    return UsageError(absl::StrCat(command.name, " cannot run here"));
  }
  return command.run(*this, Call{args, options, out});
}

absl::Status Session::RunLine(absl::Span<const std::string> tokens, std::ostream& out) {
  // This line's flags last for this line only; the command line's stay.
  FlagScope scope;
  static constexpr absl::string_view kRefused[] = {"control_socket", "broker_socket",
                                                   "hold"};
  ASSIGN_OR_RETURN(std::vector<std::string> words, ParseArgs(tokens, kRefused));
  if (words.empty()) return UsageError("no command, only flags");
  const Command* command = FindCommand(words[0]);
  if (command == nullptr) {
    return UsageError(absl::StrCat("unknown command '", words[0], "'; try help"));
  }
  const absl::Span<const std::string> args = absl::MakeConstSpan(words).subspan(1);
  RETURN_IF_ERROR(CheckCommand(*command, args.size(), /*in_session=*/true));
  return Run(*command, args, Options::FromFlags(), out);
}

int Session::RunScript(std::istream& in, std::ostream& out, bool prompt) {
  int first_failure = kExitOk;
  std::string line;
  for (;;) {
    if (prompt) out << "hallocctl> " << std::flush;
    if (!std::getline(in, line)) break;
    const std::vector<std::string> tokens =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (tokens.empty() || tokens[0][0] == '#') continue;
    const absl::Status s = RunLine(tokens, out);
    if (s.ok()) {
      out << "ok" << std::endl;
      continue;
    }
    const int code = ExitCodeFor(s);
    out << "error " << code << ": " << ErrorText(s) << std::endl;
    if (first_failure == kExitOk) first_failure = code;
  }
  if (prompt) out << "\n";
  return first_failure;
}

}  // namespace halloc::cli
