#include "clients/cpp/halloc/base/protocol.h"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace halloc {

uint32_t CpuHint(int cpu) { return cpu >= 0 ? static_cast<uint32_t>(cpu) + 1 : 0; }

uint32_t CurrentCpuHint() { return CpuHint(::sched_getcpu()); }

namespace {

constexpr char kSystemSocketDir[] = "/run/halloc";

// $XDG_RUNTIME_DIR/halloc for a user other than root (a hallocd of its own
// user's), else nothing: root's hallocd serves the machine, and takes no
// directory from an environment that `sudo -E` could have carried over
// from a user.
std::string UserSocketDir() {
  if (::geteuid() == 0) return "";
  const char* xdg = ::secure_getenv("XDG_RUNTIME_DIR");
  if (xdg == nullptr || xdg[0] == '\0') return "";
  return absl::StrCat(xdg, "/halloc");
}

}  // namespace

std::string NamedSocketPath(const std::string& given, const char* env) {
  if (!given.empty()) return given;
  if (const char* v = ::secure_getenv(env); v != nullptr && v[0] != '\0') return v;
  return "";
}

std::string DefaultSocketDir() {
  std::string user = UserSocketDir();
  return user.empty() ? kSystemSocketDir : user;
}

std::string ClientSocketDir() {
  // The user's own hallocd where it has a socket there, else the machine's
  // (a login session has XDG_RUNTIME_DIR set, and the packaged hallocd
  // listens in /run/halloc).
  if (std::string user = UserSocketDir(); !user.empty()) {
    for (const char* file : {kControlSocketFile, kBrokerSocketFile}) {
      struct stat st;
      if (::lstat(absl::StrCat(user, "/", file).c_str(), &st) == 0) return user;
    }
  }
  return kSystemSocketDir;
}

SocketPaths ClientSocketPaths(const std::string& control, const std::string& broker) {
  SocketPaths paths{NamedSocketPath(control, kControlSocketEnv),
                    NamedSocketPath(broker, kBrokerSocketEnv)};
  // The named one's directory ("" for a bare file name: the same one).
  auto beside = [](const std::string& named, const char* file) {
    const size_t slash = named.rfind('/');
    return slash == std::string::npos ? std::string(file)
                                      : absl::StrCat(named.substr(0, slash + 1), file);
  };
  if (paths.control.empty() && paths.broker.empty()) {
    const std::string dir = ClientSocketDir();
    paths.control = absl::StrCat(dir, "/", kControlSocketFile);
    paths.broker = absl::StrCat(dir, "/", kBrokerSocketFile);
  } else if (paths.control.empty()) {
    paths.control = beside(paths.broker, kControlSocketFile);
  } else if (paths.broker.empty()) {
    paths.broker = beside(paths.control, kBrokerSocketFile);
  }
  return paths;
}

}  // namespace halloc
