// Helpers for the systemd tests: a real hallocd (or systemd's own tools) in
// a child process, a stand-in for systemd's notify socket, and a health
// client.
#ifndef HALLOC_SERVICE_SYSTEMD_TESTING_H_
#define HALLOC_SERVICE_SYSTEMD_TESTING_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"  // the tests' directories
#include "clients/cpp/halloc/base/unique_fd.h"
#include "grpc/health/v1/health.pb.h"

namespace halloc::systemd_testing {

// `path` in this test's runfiles.
std::string Runfile(const std::string& path);
// The whole of file `path` ("" if it cannot be read).
std::string ReadFile(const std::string& path);
// key -> values of one of our unit files, by name ("hallocd.service"), from
// the runfiles (all sections; keys are unique across ours).
std::multimap<std::string, std::string> ParseUnit(const std::string& unit);
// The values of `key` in `kv`, in file order.
std::vector<std::string> Values(const std::multimap<std::string, std::string>& kv,
                                const std::string& key);
// systemd's tool `name` (/usr/bin, else /lib/systemd), or "" if missing.
std::string SystemdTool(const std::string& name);

// A child process running argv[0] with `env` ("NAME=value") added to ours,
// stdout and stderr to `log`. SIGKILLed and reaped when this goes (or when
// the test dies: PR_SET_PDEATHSIG).
class Child {
 public:
  static absl::StatusOr<std::unique_ptr<Child>> Start(const std::vector<std::string>& argv,
                                                      const std::vector<std::string>& env,
                                                      const std::string& log);

  pid_t pid() const { return process_.pid(); }
  void Signal(int sig) const { process_.Signal(sig); }
  // Its wait status once it exits within `timeout`; nullopt if it runs on.
  std::optional<int> Wait(absl::Duration timeout) { return process_.Wait(timeout); }
  std::string Log() const;

 private:
  Child(Subprocess process, std::string log)
      : process_(std::move(process)), log_(std::move(log)) {}
  Subprocess process_;
  std::string log_;
};

// systemd-socket-activate hands its child only TERM, PATH, USER, HOME and
// what --setenv names: the flags that pass on the sanitizer settings (and
// TSan's preloaded shim) this test runs with, so an instrumented hallocd
// behaves as it would when started directly.
std::vector<std::string> LauncherSanitizerEnv();

// Runs `argv` (its output to `log`) to completion within `timeout`: its
// exit code, -1 if it did not exit (or could not start); `out` (may be
// null) gets its output, or why it could not start.
int RunToExit(const std::vector<std::string>& argv, const std::string& log, absl::Duration timeout,
              std::string* out);

// Whether this test (and so hallocd, built with it) is instrumented.
bool Sanitized();

// Whether `path` exists within `timeout`.
bool WaitForPath(const std::string& path, absl::Duration timeout);

// A connection on a Unix socket of `type` (what wakes
// systemd-socket-activate). A launcher binds before it listens, so the path
// can exist a moment before anyone accepts: ECONNREFUSED (and ENOENT) are
// retried for up to `timeout`.
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type,
                                     absl::Duration timeout = absl::Seconds(20));

// What systemd's manager is to a Type=notify service: a datagram socket the
// service's sd_notify() messages arrive on.
class NotifySocket {
 public:
  static absl::StatusOr<NotifySocket> Bind(const std::string& path);
  // The next message, or nullopt after `timeout`.
  std::optional<std::string> Next(absl::Duration timeout);
  // Messages until one holding the line `line` (that one included); nullopt
  // if none comes within `timeout`.
  std::optional<std::vector<std::string>> Until(const std::string& line, absl::Duration timeout);

 private:
  UniqueFd fd_;
};

// grpc.health.v1.Health/Check for `service` on the control socket at `path`.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    const std::string& path, const std::string& service, absl::Duration timeout);

}  // namespace halloc::systemd_testing

#endif  // HALLOC_SERVICE_SYSTEMD_TESTING_H_
