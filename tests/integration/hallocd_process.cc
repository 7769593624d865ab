#include "tests/integration/hallocd_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/broker_conn.h"

namespace halloc::testing {
namespace {

// A field of /proc/<pid>/status ("Threads:", "VmRSS:"), or -1.
long StatusField(pid_t pid, absl::string_view field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field)) return std::stol(line.substr(field.size()));
  }
  return -1;
}

}  // namespace

std::string Runfile(const std::string& path) {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/", path);
}

absl::StatusOr<std::unique_ptr<HallocdProcess>> HallocdProcess::Start(const std::string& dir,
                                                                      Options options) {
  static std::atomic<int> starts{0};
  std::unique_ptr<HallocdProcess> d(new HallocdProcess());
  d->opts_.control_socket = dir + "/control.sock";
  d->opts_.broker_socket = dir + "/broker.sock";
  d->log_ = absl::StrCat(dir, "/hallocd.", ++starts, ".log");
  std::vector<std::string> args = {Runfile("service/hallocd"),
                                   "--control_socket=" + d->opts_.control_socket,
                                   "--broker_socket=" + d->opts_.broker_socket,
                                   "--socket_mode=0666"};
  // Its fds are counted through its /proc/PID/fd, which hallocd closes to
  // its own uid (non-dumpable) unless told not to; root reads it anyway.
  // And its read-only shares to this process's uid are what tests look at.
  if (::geteuid() != 0) {
    args.insert(args.end(), {"--dumpable", "--read_only_for_own_uid"});
  }
  if (!options.policy.empty()) {
    const std::string file = dir + "/policy.textproto";
    std::ofstream(file) << options.policy;
    ::chmod(file.c_str(), 0644);  // hallocd reads no group-writable policy (umask 002)
    args.push_back("--policy=" + file);
  }
  args.insert(args.end(), options.flags.begin(), options.flags.end());
  UniqueFd log(open(d->log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!log) return ErrnoStatus(errno, "open " + d->log_);
  SpawnOptions o;
  o.argv = std::move(args);
  o.stderr_fd = log.get();
  o.nofile = options.nofile;
  ASSIGN_OR_RETURN(d->process_, Subprocess::Spawn(o));
  // Ready once the broker accepts: it starts last, and its socket file
  // exists from bind(), before listen().
  for (int i = 0; i < 2000; ++i) {
    if (ConnectSeqpacket(d->opts_.broker_socket).ok()) return d;
    if (std::optional<int> status = d->process_.Wait(absl::ZeroDuration())) {
      return absl::UnavailableError(absl::StrCat("hallocd exited (wait status ", *status,
                                                 ") before it listened; log:\n", d->Log()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::UnavailableError(absl::StrCat("hallocd did not start; log:\n", d->Log()));
}

HallocdProcess::~HallocdProcess() { Kill(); }

void HallocdProcess::Kill() {
  process_.Signal(SIGKILL);
  process_.Wait();
}

std::string HallocdProcess::Log() const {
  std::ifstream in(log_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int HallocdProcess::Fds() const {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid(), "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return ec ? -1 : n;
}

std::string HallocdProcess::FdTable() const {
  // A Unix socket's type and path (a listener's, for the connections it
  // accepted), by inode: /proc/net/unix's "Num RefCount Protocol Flags Type
  // St Inode [Path]".
  std::map<std::string, std::string> unix_sockets;
  std::ifstream net("/proc/net/unix");
  for (std::string line; std::getline(net, line);) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 7) continue;
    unix_sockets[f[6]] = absl::StrCat(" (unix type ", f[4], " state ", f[5],
                                      f.size() > 7 ? absl::StrCat(" ", f[7]) : "", ")");
  }
  std::error_code ec;
  std::string table;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid(), "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::error_code link_ec;
    const std::filesystem::path target = std::filesystem::read_symlink(it->path(), link_ec);
    std::string what = link_ec ? "(gone)" : target.string();
    if (absl::StartsWith(what, "socket:[")) {
      auto u = unix_sockets.find(what.substr(8, what.size() - 9));
      if (u != unix_sockets.end()) what += u->second;
    }
    absl::StrAppend(&table, it->path().filename().string(), " -> ", what, "\n");
  }
  return table;
}

int HallocdProcess::Threads() const { return static_cast<int>(StatusField(pid(), "Threads:")); }

long HallocdProcess::RssKib() const { return StatusField(pid(), "VmRSS:"); }

long HallocdProcess::PeakRssKib() const { return StatusField(pid(), "VmHWM:"); }

}  // namespace halloc::testing
