// A client process for multi-client tests: the peer binary (peer_main.cc)
// in shell mode, exec'ed as its own uid, driven one command line at a time.
// gRPC must not be used in a forked child of a gRPC process, so the child
// execs at once. Used by the host policy test and the in-guest one.
#ifndef HALLOC_TESTS_INTEGRATION_PEER_PROCESS_H_
#define HALLOC_TESTS_INTEGRATION_PEER_PROCESS_H_

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"

namespace halloc {

// One client process (peer shell, binary `peer_bin`) running as `uid`.
class Peer {
 public:
  Peer(const std::string& peer_bin, const ConnectOptions& o, uid_t uid) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0) return;
    UniqueFd in_r(in[0]), in_w(in[1]);
    if (pipe2(out, O_CLOEXEC) != 0) return;
    UniqueFd out_r(out[0]), out_w(out[1]);
    SpawnOptions so;
    so.argv = {peer_bin, o.control_socket, o.broker_socket, "shell", std::to_string(uid)};
    so.stdin_fd = in_r.get();
    so.stdout_fd = out_w.get();
    absl::StatusOr<Subprocess> p = Subprocess::Spawn(so);
    if (!p.ok()) return;  // every Do() answers "dead"
    process_ = *std::move(p);
    to_ = fdopen(in_w.release(), "w");
    from_ = fdopen(out_r.release(), "r");
  }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;
  ~Peer() { Quit(); }

  // Sends one command, returns its reply line ("dead" once the peer is gone).
  std::string Do(const std::string& cmd) {
    if (to_ == nullptr) return "dead";
    fprintf(to_, "%s\n", cmd.c_str());
    fflush(to_);
    char line[512];
    if (fgets(line, sizeof(line), from_) == nullptr) return "dead";
    std::string s(line);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  // "ok X ..." → X.
  std::string Value(const std::string& cmd, int field = 1) {
    std::vector<std::string> f = absl::StrSplit(Do(cmd), ' ');
    return f.size() > static_cast<size_t>(field) && f[0] == "ok" ? f[field] : "";
  }
  void Quit() {
    if (to_ != nullptr) {
      fclose(to_);
      fclose(from_);
      to_ = from_ = nullptr;
    }
    process_.Wait();
  }

 private:
  Subprocess process_;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

// Whether this process may run children as other uids (root, outside a
// user namespace without them): tries `probe_uid`.
inline bool CanSwitchUid(uid_t probe_uid) {
  if (geteuid() == probe_uid) return false;  // as itself: no other uid to test
  pid_t pid = fork();
  if (pid == 0) _exit(setgid(probe_uid) == 0 && setuid(probe_uid) == 0 ? 0 : 1);
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace halloc

#endif  // HALLOC_TESTS_INTEGRATION_PEER_PROCESS_H_
