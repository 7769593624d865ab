#include "service/systemd/testing.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace halloc::systemd_testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::multimap<std::string, std::string> ParseUnit(const std::string& unit) {
  std::multimap<std::string, std::string> kv;
  std::istringstream in(ReadFile(Runfile("service/systemd/" + unit)));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    const size_t eq = line.find('=');
    if (eq != std::string::npos) kv.emplace(line.substr(0, eq), line.substr(eq + 1));
  }
  return kv;
}

std::vector<std::string> Values(const std::multimap<std::string, std::string>& kv,
                                const std::string& key) {
  std::vector<std::string> out;
  for (auto [it, end] = kv.equal_range(key); it != end; ++it) out.push_back(it->second);
  return out;
}

std::string Runfile(const std::string& path) {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/", path);
}

std::string SystemdTool(const std::string& name) {
  for (const char* dir : {"/usr/bin/", "/bin/", "/lib/systemd/", "/usr/lib/systemd/"}) {
    const std::string p = dir + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Child>> Child::Start(const std::vector<std::string>& argv,
                                                    const std::vector<std::string>& env,
                                                    const std::string& log) {
  UniqueFd out(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!out) return ErrnoStatus(errno, "open " + log);
  SpawnOptions o;
  o.argv = argv;
  o.env = EnvironmentWith(env);
  o.stdout_fd = out.get();
  o.stderr_fd = out.get();
  ASSIGN_OR_RETURN(Subprocess process, Subprocess::Spawn(o));
  return std::unique_ptr<Child>(new Child(std::move(process), log));
}

std::string Child::Log() const {
  std::ifstream in(log_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int RunToExit(const std::vector<std::string>& argv, const std::string& log, absl::Duration timeout,
              std::string* out) {
  absl::StatusOr<std::unique_ptr<Child>> c = Child::Start(argv, {}, log);
  if (!c.ok()) {
    if (out != nullptr) *out = c.status().ToString();
    return -1;
  }
  std::optional<int> status = (*c)->Wait(timeout);
  if (out != nullptr) *out = (*c)->Log();
  return status && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
}

std::vector<std::string> LauncherSanitizerEnv() {
  std::vector<std::string> flags;
  for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS",
                           "LD_PRELOAD"}) {
    if (getenv(name) != nullptr) flags.push_back(absl::StrCat("--setenv=", name));
  }
  return flags;
}

bool Sanitized() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(undefined_behavior_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

bool WaitForPath(const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (::access(path.c_str(), F_OK) != 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type,
                                     absl::Duration timeout) {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!fd) return ErrnoStatus(errno, "socket");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) == 0) {
      return fd;
    }
    const int err = errno;
    if ((err != ECONNREFUSED && err != ENOENT) || absl::Now() >= deadline) {
      return ErrnoStatus(err, absl::StrCat("connect(", path, ")"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::StatusOr<NotifySocket> NotifySocket::Bind(const std::string& path) {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  NotifySocket s;
  s.fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s.fd_) return ErrnoStatus(errno, "socket");
  if (::bind(s.fd_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("bind(", path, ")"));
  }
  return s;
}

std::optional<std::string> NotifySocket::Next(absl::Duration timeout) {
  pollfd pfd{fd_.get(), POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) != 1) {
    return std::nullopt;
  }
  char buf[4096];
  const ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<size_t>(n));
}

std::optional<std::vector<std::string>> NotifySocket::Until(const std::string& line,
                                                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> seen;
  for (;;) {
    std::optional<std::string> m = Next(deadline - absl::Now());
    if (!m) return std::nullopt;
    seen.push_back(*m);
    for (absl::string_view l : absl::StrSplit(*m, '\n')) {
      if (l == line) return seen;
    }
  }
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    const std::string& path, const std::string& service, absl::Duration timeout) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(absl::StrCat("unix:", path), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  ctx.set_wait_for_ready(true);  // the first call may wake a socket-activated hallocd
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  return resp.status();
}

}  // namespace halloc::systemd_testing
