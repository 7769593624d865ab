// hallocd: the halloc allocator daemon.
//
//   hallocd [--control_socket=PATH] [--broker_socket=PATH] [--backend=auto]
//
// SIGTERM/SIGINT: stop accepting, finish in-flight calls, exit 0.
// SIGHUP: re-read --policy; a file that does not parse or validate is
// rejected with a log line and the old policy stays.
#include <glog/logging.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "service/daemon.h"

ABSL_FLAG(std::string, control_socket, "",
          "gRPC control socket (default: <socket dir>/control.sock, where the "
          "socket dir is $XDG_RUNTIME_DIR/halloc or /run/halloc)");
ABSL_FLAG(std::string, broker_socket, "",
          "fd broker socket (default: <socket dir>/broker.sock)");
ABSL_FLAG(std::string, backend, "auto",
          "backend: auto (halloc when halloc_heap.ko is loaded, else memfd), "
          "halloc (dma-bufs from the kernel heaps, rights enforced by kernel "
          "views), memfd, or memfd-pool (memfd behind a bounded pool of "
          "pre-created buffers per recurring request); dmaheap and udmabuf "
          "are not built yet");
ABSL_FLAG(std::string, policy, "",
          "policy file (text format of halloc.v1.Policy, see "
          "service/policy/example.textproto); re-read on SIGHUP. Empty: every "
          "client may do everything, sharing only within its own uid");
ABSL_FLAG(std::string, socket_mode, "0660", "permissions of the sockets (octal)");
ABSL_FLAG(uint64_t, max_buffer_bytes, uint64_t{4} << 30, "largest buffer");
ABSL_FLAG(uint64_t, max_buffers_per_session, 1 << 18,
          "most buffers one client session may hold");

ABSL_FLAG(int, grpc_max_threads, 32,
          "most threads the gRPC server may run (calls beyond wait or get "
          "RESOURCE_EXHAUSTED)");
ABSL_FLAG(int, grpc_max_streams_per_connection, 64,
          "most concurrent gRPC calls on one connection");

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

bool MakeDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) return true;
  PLOG(ERROR) << "mkdir " << dir;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "halloc allocator daemon: serves halloc.v1.Allocator over gRPC on a "
      "Unix socket and hands buffer fds out over the broker socket.");
  absl::ParseCommandLine(argc, argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
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

  halloc::DaemonOptions options;
  const std::string dir = halloc::DefaultSocketDir();
  options.control_socket = absl::GetFlag(FLAGS_control_socket);
  options.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  if (options.control_socket.empty() || options.broker_socket.empty()) {
    if (!MakeDir(dir)) return 1;
  }
  if (options.control_socket.empty()) {
    options.control_socket = absl::StrCat(dir, "/control.sock");
  }
  if (options.broker_socket.empty()) {
    options.broker_socket = absl::StrCat(dir, "/broker.sock");
  }
  options.backend = absl::GetFlag(FLAGS_backend);
  options.policy_file = absl::GetFlag(FLAGS_policy);
  options.socket_mode = static_cast<mode_t>(
      std::strtoul(absl::GetFlag(FLAGS_socket_mode).c_str(), nullptr, 8));
  options.limits.max_buffer_bytes = absl::GetFlag(FLAGS_max_buffer_bytes);
  options.limits.max_buffers_per_session =
      absl::GetFlag(FLAGS_max_buffers_per_session);
  options.grpc_max_threads = absl::GetFlag(FLAGS_grpc_max_threads);
  options.grpc_max_streams_per_connection =
      absl::GetFlag(FLAGS_grpc_max_streams_per_connection);

  absl::StatusOr<std::unique_ptr<halloc::Daemon>> daemon =
      halloc::Daemon::Start(options);
  if (!daemon.ok()) {
    LOG(ERROR) << "hallocd failed to start: " << daemon.status();
    return 1;
  }
  LOG(INFO) << "hallocd ready (pid " << getpid() << ")";

  int sig = 0;
  for (;;) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) break;
    (void)(*daemon)->ReloadPolicy();  // logs its outcome; old policy kept on error
  }
  LOG(INFO) << "signal " << sig << ": shutting down";
  (*daemon)->Shutdown(absl::Seconds(5));
  daemon->reset();
  LOG(INFO) << "hallocd stopped";
  return 0;
}
