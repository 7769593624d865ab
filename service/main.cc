// hallocd: the halloc allocator daemon.
//
//   hallocd [--control_socket=PATH] [--broker_socket=PATH] [--backend=auto]
//           [--dma_heap=NAME]
//
// SIGTERM/SIGINT: stop accepting, finish in-flight calls, exit 0.
// SIGHUP: re-read --policy; a file that does not parse or validate is
// rejected with a log line and the old policy stays.
//
// Under systemd (service/systemd/): sockets named "control" and "broker"
// passed by socket activation are served instead of binding the paths;
// readiness, reloads and the stop are reported with sd_notify, and with
// WatchdogSec= a thread pings the watchdog while both sockets answer. Run
// by hand, none of this happens.
#include <glog/logging.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "service/connection_limits.h"
#include "service/daemon.h"
#include "service/grpc_listener.h"
#include "service/systemd/activation.h"
#include "service/systemd/liveness.h"
#include "service/systemd/notify.h"
#include "service/util/grpc_log.h"
#include "service/util/log_limit.h"

// Exit status of a start refused what it needs (EX_CONFIG, sysexits.h);
// hallocd.service does not restart on it.
constexpr int kExitConfig = 78;

ABSL_FLAG(std::string, control_socket, "",
          "gRPC control socket (default: <socket dir>/control.sock, where the "
          "socket dir is $XDG_RUNTIME_DIR/halloc or /run/halloc); under socket "
          "activation the socket named 'control' is served instead (this flag must "
          "then be empty or its path)");
ABSL_FLAG(std::string, broker_socket, "",
          "fd broker socket (default: <socket dir>/broker.sock); under socket "
          "activation, the socket named 'broker'");
ABSL_FLAG(std::string, backend, "auto",
          "backend: auto (the first that works here of halloc, dmaheap, "
          "udmabuf, memfd), halloc (dma-bufs from the kernel heaps, rights "
          "enforced by kernel views), dmaheap (dma-bufs from an upstream "
          "/dev/dma_heap node, see --dma_heap; read-write only), udmabuf "
          "(sealed memfds made dma-bufs by /dev/udmabuf; read-write only), "
          "memfd, or memfd-pool (memfd behind a bounded pool of pre-created "
          "buffers per recurring request)");
ABSL_FLAG(std::string, dma_heap, "",
          "dmaheap backend: the heap node under /dev/dma_heap, e.g. system or "
          "linux,cma; empty: the first present of system, linux,cma, "
          "reserved, halloc-system, else the first in name order");
ABSL_FLAG(bool, skip_closed_nodes, true,
          "--backend=auto: pass over a backend whose device node is there but "
          "closed to hallocd (EACCES/EPERM: its mode or group, DeviceAllow=), as "
          "one the machine lacks (a hallocd of one user's). false: stop with an "
          "error instead (the system unit, whose user the udev rule gives the "
          "nodes to: a closed node is a setup mistake that would leave hallocd "
          "on a backend that enforces less)");
ABSL_FLAG(uint64_t, pool_max_bytes, halloc::BackendConfig().pool_max_bytes,
          "--backend=memfd-pool: the most memory held in stock, made ahead of "
          "requests and charged to no client (0: none; every allocation made "
          "on request); each class holds at most 64 MiB of it");
ABSL_FLAG(absl::Duration, pool_idle_timeout, halloc::BackendConfig().pool_idle_timeout,
          "--backend=memfd-pool: a request class unused this long loses its stock");
ABSL_FLAG(bool, read_only_for_own_uid, false,
          "memfd backends: hand read-only views to processes of hallocd's own uid (and of "
          "user namespaces mapping it) as to any other, though they may make them writable "
          "again (fchmod the memfd, reopen it); where that uid is no boundary anyway (a "
          "test suite's hallocd, a user's own). false: they get read-write where their "
          "rule allows it, and a rule capping them at read is refused");
ABSL_FLAG(bool, dumpable, false,
          "leave hallocd dumpable: core files, and a debugger or /proc/PID/fd of its "
          "own uid; also any other process of its uid, which could then take every "
          "client's buffer, read-write, from its fds (false: only root can)");
ABSL_FLAG(std::string, policy, "",
          "policy file (text format of halloc.v1.Policy, see "
          "service/policy/example.textproto); re-read on SIGHUP. Empty: every "
          "client may do everything, sharing only within its own uid");
ABSL_FLAG(std::string, socket_mode, "0660",
          "permissions of the sockets hallocd binds (octal; systemd's sockets keep "
          "their unit's SocketMode=)");
ABSL_FLAG(uint64_t, max_buffer_bytes, uint64_t{4} << 30, "largest buffer");
ABSL_FLAG(uint64_t, max_buffers_per_session, 1 << 18,
          "most buffers one client session may hold");
ABSL_FLAG(uint64_t, max_buffers, 0,
          "most buffers hallocd holds at once, all clients together (each is "
          "an fd in it, a memfd's read-only view one more); 0: its fd limit less what the policy's "
          "connection "
          "limits and the buffer pool may take, and 256");

ABSL_FLAG(int, grpc_max_threads, 32,
          "most threads the gRPC server may run (calls beyond wait or get "
          "RESOURCE_EXHAUSTED)");
ABSL_FLAG(std::string, metrics_address, "",
          "serve Prometheus metrics (GET /metrics) on this loopback address, "
          "e.g. 127.0.0.1:9464 (off when empty; under the shipped unit, which "
          "has PrivateNetwork=yes, use `hallocctl stats --prometheus` with "
          "node_exporter's textfile collector instead)");
ABSL_FLAG(std::vector<std::string>, metrics_scraper_uids, {},
          "uids that scrape --metrics_address (e.g. `id -u prometheus`), comma "
          "separated: all other uids then share half its connection slots, so "
          "that no user (with its subordinate uids) can hold every slot");
ABSL_FLAG(bool, broker_follow_cpu, true,
          "while the broker serves one client at a time, move its thread to "
          "the CPU that client sends from (BrokerRequest.cpu), so that replies "
          "do not wake a second, sleeping CPU");
ABSL_FLAG(bool, control_relay, true,
          "hand gRPC each control connection through hallocd's relay, which reads "
          "its HTTP/2 frame headers (service/h2_guard.h: Debian's gRPC 1.51 has no "
          "defence against stream-reset or CONTINUATION floods) and takes any fds "
          "off; --nocontrol_relay hands them to gRPC directly where the kernel "
          "refuses fds at the sender (Linux 6.16+): two thread hops fewer per "
          "call, and no guard");
ABSL_FLAG(int, grpc_max_streams_per_connection, 64,
          "most concurrent gRPC calls on one connection");
ABSL_FLAG(int, grpc_max_message_bytes, halloc::kMaxRequestBytes,
          "largest gRPC request read, in bytes (RESOURCE_EXHAUSTED past it; "
          "the broker's record limit by default)");

ABSL_FLAG(int64_t, grpc_max_memory_bytes, int64_t{64} << 20,
          "most memory gRPC's transport may hold, in bytes (past it, it ends "
          "connections' calls rather than grow: requests a client never "
          "finishes are held until then)");

ABSL_FLAG(std::string, subuid_file, "/etc/subuid",
          "subordinate uid ranges (subuid(5)), read again when it changes: the "
          "connect rate (policy sessions.connects_per_second) holds a user's "
          "ranges, and each 65,536-uid slice of root's, as one uid, so that "
          "no user's subordinate uids (nor a container's) each get a rate of "
          "their own (a container's uids are charged as its root, from its "
          "namespace's map, listed or not)");

ABSL_FLAG(bool, mutex_deadlock_detection, false,
          "check every absl::Mutex acquisition for lock-order cycles (slow; "
          "Debian's Abseil enables it unless told otherwise)");

namespace {

// Live buffers each hold an fd in the daemon: allow as many as the hard limit.
void RaiseFdLimit() {
  rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) PLOG(WARNING) << "setrlimit";
  }
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    LOG(INFO) << "fd limit: " << lim.rlim_cur;
  }
}

// The default socket directory: made, or a real directory already there
// (not a link to one: BindUnixSocket then checks who may change it).
absl::Status MakeDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) == 0) return absl::OkStatus();
  if (errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkdir ", dir, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory (a link?): not binding sockets there"));
  }
  return absl::OkStatus();
}

// The socket path: systemd's when it passed one (a --flag must then agree),
// else the flag, else <socket dir>/<file>.
absl::StatusOr<std::string> SocketPath(const std::string& flag_name, const std::string& flag,
                                       const std::string& inherited, const std::string& file) {
  if (!inherited.empty()) {
    if (!flag.empty() && flag != inherited) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--", flag_name, "=", flag, ", but systemd passed that socket bound to ", inherited));
    }
    return inherited;
  }
  if (!flag.empty()) return flag;
  const std::string dir = halloc::DefaultSocketDir();
  if (absl::Status s = MakeDir(dir); !s.ok()) return s;
  return absl::StrCat(dir, "/", file);
}

absl::StatusOr<halloc::DaemonOptions> OptionsFromFlags(const halloc::ActivatedSockets& sockets) {
  halloc::DaemonOptions options;
  absl::StatusOr<std::string> control =
      SocketPath("control_socket", absl::GetFlag(FLAGS_control_socket), sockets.control_path,
                 halloc::kControlSocketFile);
  if (!control.ok()) return control.status();
  absl::StatusOr<std::string> broker =
      SocketPath("broker_socket", absl::GetFlag(FLAGS_broker_socket), sockets.broker_path,
                 halloc::kBrokerSocketFile);
  if (!broker.ok()) return broker.status();
  options.control_socket = *std::move(control);
  options.broker_socket = *std::move(broker);
  options.backend = absl::GetFlag(FLAGS_backend);
  options.dma_heap = absl::GetFlag(FLAGS_dma_heap);
  options.skip_closed_nodes = absl::GetFlag(FLAGS_skip_closed_nodes);
  options.pool_max_bytes = absl::GetFlag(FLAGS_pool_max_bytes);
  options.pool_idle_timeout = absl::GetFlag(FLAGS_pool_idle_timeout);
  options.read_only_for_own_uid = absl::GetFlag(FLAGS_read_only_for_own_uid);
  if (options.pool_idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--pool_idle_timeout must be > 0");
  }
  options.policy_file = absl::GetFlag(FLAGS_policy);
  halloc::SetSubordinateUidFile(absl::GetFlag(FLAGS_subuid_file));
  const std::string mode = absl::GetFlag(FLAGS_socket_mode);
  const unsigned long bits =  // octal digits only (at most four): no overflow
      mode.empty() || mode.size() > 4 || mode.find_first_not_of("01234567") != std::string::npos
          ? ~0ul
          : std::strtoul(mode.c_str(), nullptr, 8);
  if (bits > 0777) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--socket_mode must be permission bits in octal, 0 to 0777 (e.g. 0660), not '",
        absl::CHexEscape(mode), "'"));
  }
  options.socket_mode = static_cast<mode_t>(bits);
  options.limits.max_buffer_bytes = absl::GetFlag(FLAGS_max_buffer_bytes);
  // Sizes are rounded up to pages and multiplied by counts (at most 64)
  // in 64 bits: a limit near 2^64 would let them wrap.
  constexpr uint64_t kMaxBufferBytesCeiling = uint64_t{1} << 48;  // 256 TiB
  if (options.limits.max_buffer_bytes == 0 ||
      options.limits.max_buffer_bytes > kMaxBufferBytesCeiling) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_buffer_bytes must be 1..", kMaxBufferBytesCeiling, " (256 TiB), not ",
        options.limits.max_buffer_bytes));
  }
  options.limits.max_buffers_per_session =
      absl::GetFlag(FLAGS_max_buffers_per_session);
  options.limits.max_buffers = absl::GetFlag(FLAGS_max_buffers);
  options.grpc_max_threads = absl::GetFlag(FLAGS_grpc_max_threads);
  options.grpc_max_streams_per_connection =
      absl::GetFlag(FLAGS_grpc_max_streams_per_connection);
  // gRPC's sync server needs a few threads to poll at all: below that every
  // call is RESOURCE_EXHAUSTED (1) or it aborts (0).
  constexpr int kMinGrpcThreads = 4, kMaxGrpcThreads = 4096;
  if (options.grpc_max_threads < kMinGrpcThreads || options.grpc_max_threads > kMaxGrpcThreads) {
    return absl::InvalidArgumentError(absl::StrCat("--grpc_max_threads must be ",
                                                   kMinGrpcThreads, "..", kMaxGrpcThreads,
                                                   ", not ", options.grpc_max_threads));
  }
  if (options.grpc_max_streams_per_connection < 1 ||
      options.grpc_max_streams_per_connection > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--grpc_max_streams_per_connection must be 1..65536, not ",
                     options.grpc_max_streams_per_connection));
  }
  options.grpc_max_message_bytes = absl::GetFlag(FLAGS_grpc_max_message_bytes);
  // Below a few KiB no real request fits (an Allocate with a layout).
  constexpr int kMinGrpcMessage = 4096, kMaxGrpcMessage = 64 << 20;
  if (options.grpc_max_message_bytes < kMinGrpcMessage ||
      options.grpc_max_message_bytes > kMaxGrpcMessage) {
    return absl::InvalidArgumentError(absl::StrCat("--grpc_max_message_bytes must be ",
                                                   kMinGrpcMessage, "..", kMaxGrpcMessage, ", not ",
                                                   options.grpc_max_message_bytes));
  }
  options.grpc_max_memory_bytes = absl::GetFlag(FLAGS_grpc_max_memory_bytes);
  // Room for the calls of a few connections at least.
  constexpr int64_t kMinGrpcMemory = int64_t{16} << 20;
  if (options.grpc_max_memory_bytes < kMinGrpcMemory) {
    return absl::InvalidArgumentError(absl::StrCat("--grpc_max_memory_bytes must be at least ",
                                                   kMinGrpcMemory, ", not ",
                                                   options.grpc_max_memory_bytes));
  }
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  for (const std::string& u : absl::GetFlag(FLAGS_metrics_scraper_uids)) {
    uid_t uid = 0;
    if (!absl::SimpleAtoi(u, &uid)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics_scraper_uids: '", absl::CHexEscape(u), "' is not a uid (a number)"));
    }
    options.metrics_scraper_uids.push_back(uid);
  }
  halloc::Broker::follow_client_cpu = absl::GetFlag(FLAGS_broker_follow_cpu);
  halloc::GrpcListener::relay_always = absl::GetFlag(FLAGS_control_relay);
  return options;
}

// The daemon on systemd's sockets when it passed any, else on the paths.
absl::StatusOr<std::unique_ptr<halloc::Daemon>> StartDaemon() {
  absl::StatusOr<halloc::ActivatedSockets> sockets = halloc::TakeActivatedSockets();
  if (!sockets.ok()) return sockets.status();
  absl::StatusOr<halloc::DaemonOptions> options = OptionsFromFlags(*sockets);
  if (!options.ok()) return options.status();
  halloc::InheritedListeners inherited;
  inherited.control = std::move(sockets->control);
  inherited.broker = std::move(sockets->broker);
  return halloc::Daemon::Start(*std::move(options), std::move(inherited));
}

// Watchdog pings while both sockets answer as a client sees them; nullptr
// without WatchdogSec=.
std::unique_ptr<halloc::Watchdog> StartWatchdog(const halloc::DaemonOptions& options) {
  auto probe = std::make_shared<halloc::LivenessProbe>(options.control_socket,
                                                       options.broker_socket);
  std::unique_ptr<halloc::Watchdog> watchdog = halloc::Watchdog::StartIfEnabled(
      [probe](absl::Duration timeout) { return probe->Check(timeout); });
  if (watchdog) {
    LOG(INFO) << "watchdog: probing both sockets every " << watchdog->interval();
  }
  return watchdog;
}

}  // namespace

int main(int argc, char** argv) {
  // Not dumpable, first thing: hallocd holds every client's buffer
  // read-write, and a process of its own uid (for a hallocd run by a user,
  // each of that user's programs) could otherwise open them through
  // /proc/PID/fd/N, or its memory, or ptrace it. Its /proc files become
  // root's; it still opens its own. No core file either (root may still
  // attach a debugger). --dumpable undoes it once flags are read. What a
  // process of its uid opened before this line (its exec) it keeps.
  if (prctl(PR_SET_DUMPABLE, 0) != 0) {
    perror("prctl(PR_SET_DUMPABLE, 0)");
    return 1;
  }
  absl::SetProgramUsageMessage(
      "halloc allocator daemon: serves halloc.v1.Allocator over gRPC on a "
      "Unix socket and hands buffer fds out over the broker socket.");
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  if (absl::GetFlag(FLAGS_dumpable) && prctl(PR_SET_DUMPABLE, 1) != 0) {
    PLOG(ERROR) << "prctl(PR_SET_DUMPABLE, 1)";
    return 1;
  }
  // libprotobuf's own lines (a client's message with a bad string field)
  // and gRPC's (a header value it cannot parse, logged whole) are
  // rate-limited and escaped like every line an outsider can trigger.
  halloc::LimitProtobufLogs();
  halloc::LimitGrpcLogs();
  // Debian builds Abseil without NDEBUG, which turns on deadlock detection:
  // a lock-graph update on every Mutex acquisition of every request. The
  // test suites keep it (they run the daemon in-process); hallocd need not.
  if (!absl::GetFlag(FLAGS_mutex_deadlock_detection)) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }

  // Block the signals we wait for before any thread starts, so they all
  // inherit the mask and only sigwait below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();

  absl::StatusOr<std::unique_ptr<halloc::Daemon>> daemon = StartDaemon();
  if (!daemon.ok()) {
    LOG(ERROR) << "hallocd failed to start: " << daemon.status();
    // Refused what it needs (a device node closed to it, a policy file it
    // may not trust): no restart cures that (RestartPreventExitStatus=).
    return absl::IsPermissionDenied(daemon.status()) ? kExitConfig : 1;
  }
  const halloc::DaemonOptions& options = (*daemon)->options();
  LOG(INFO) << "hallocd ready (pid " << getpid() << ")";
  // Both sockets accept by now (Start returns after the broker listens).
  halloc::Notify(absl::StrCat("READY=1\nSTATUS=serving: control ", options.control_socket,
                              ", broker ", options.broker_socket));
  std::unique_ptr<halloc::Watchdog> watchdog = StartWatchdog(options);

  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    halloc::Notify("RELOADING=1\nSTATUS=reloading the policy");
    // Logs its outcome; the old policy stays on error.
    const absl::Status reload = (*daemon)->ReloadPolicy();
    halloc::Notify(reload.ok() ? "READY=1\nSTATUS=serving; policy reloaded"
                               : "READY=1\nSTATUS=serving; policy reload rejected, old "
                                 "policy kept (see the log)");
  }
  LOG(INFO) << "signal " << sig << ": shutting down";
  halloc::Notify("STOPPING=1\nSTATUS=shutting down");
  watchdog.reset();
  (*daemon)->Shutdown(absl::Seconds(5));
  daemon->reset();
  LOG(INFO) << "hallocd stopped";
  return 0;
}
