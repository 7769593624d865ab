#include "clients/wayland/weston.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::wayland {
namespace {

namespace fs = std::filesystem;

bool CanConnect(const std::string& path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  return fd.is_valid() &&
         connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ==
             0;
}

std::string Tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)),
                std::istreambuf_iterator<char>());
  return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return "stopped";
}

}  // namespace

absl::StatusOr<Subprocess> Weston::Spawn(const std::vector<std::string>& argv,
                                         const std::vector<std::string>& env,
                                         const std::string& cwd, const std::string& log) {
  UniqueFd out(open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!out) return ErrnoStatus(errno, "open " + log);
  UniqueFd in(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoStatus(errno, "open /dev/null");
  SpawnOptions o;
  o.argv = argv;
  // Not the Wayland session this process may run in: only the one in `env`.
  o.env = EnvironmentWith(env, {"WAYLAND_DISPLAY", "WAYLAND_SOCKET", "XDG_RUNTIME_DIR"});
  o.cwd = cwd;
  o.stdin_fd = in.get();
  o.stdout_fd = out.get();
  o.stderr_fd = out.get();
  return Subprocess::Spawn(o);
}

absl::StatusOr<std::unique_ptr<Weston>> Weston::Start(
    const WestonOptions& options) {
  for (const std::string& bin : {options.binary, options.screenshooter}) {
    if (access(bin.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(
          bin, " is not installed (Debian package weston; tools/run setup)"));
    }
  }
  std::unique_ptr<Weston> w(new Weston());
  w->options_ = options;
  char dir[] = "/tmp/halloc-weston-XXXXXX";
  if (!mkdtemp(dir)) return ErrnoStatus(errno, "mkdtemp /tmp/halloc-weston-*");
  w->dir_ = dir;
  w->socket_ = w->dir_ + "/wayland-halloc";
  w->log_ = w->dir_ + "/weston.log";
  // desktop-shell without its panel, animations or lock screen, on black:
  // a fullscreen window is all there is to see. (kiosk-shell would be the
  // obvious choice, but weston 10's never sends a headless output's
  // surfaces a frame callback.)
  const std::string config = w->dir_ + "/weston.ini";
  {
    std::ofstream ini(config);
    ini << "[core]\nidle-time=0\n"
        << "[shell]\npanel-position=none\nbackground-color=0xff000000\n"
        << "locking=false\nstartup-animation=none\nanimation=none\n"
        << "close-animation=none\nfocus-animation=none\n";
    if (!ini.good()) return ErrnoStatus(errno, "writing " + config);
  }
  ASSIGN_OR_RETURN(w->process_, Spawn(
      {options.binary, "--backend=headless-backend.so", "--use-pixman",
       "--shell=desktop-shell.so", "--socket=wayland-halloc",
       "--config=" + config, "--debug",
       absl::StrCat("--width=", options.width),
       absl::StrCat("--height=", options.height)},
      {"XDG_RUNTIME_DIR=" + w->dir_}, w->dir_, w->log_));
  const absl::Time deadline = absl::Now() + options.start_timeout;
  while (!CanConnect(w->socket_)) {
    if (std::optional<int> status = w->process_.Wait(absl::ZeroDuration())) {
      return absl::UnavailableError(
          absl::StrCat("weston exited (", DescribeExit(*status),
                       ") before it listened; its log:\n", w->LogTail()));
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "weston did not listen on ", w->socket_, " within ",
          absl::FormatDuration(options.start_timeout), "; its log:\n",
          w->LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return w;
}

Weston::~Weston() {
  process_.Stop(absl::Seconds(1));
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string Weston::LogTail(size_t max_bytes) const {
  return Tail(log_, max_bytes);
}

absl::Status Weston::Screenshot(const std::string& png_path,
                                absl::Duration timeout) {
  // weston-screenshooter writes wayland-screenshot-<time>.png into its
  // working directory: give each shot its own.
  const std::string shot_dir = absl::StrCat(dir_, "/shot-", shots_++);
  std::error_code ec;
  if (!fs::create_directory(shot_dir, ec)) {
    return absl::InternalError(
        absl::StrCat("cannot create ", shot_dir, ": ", ec.message()));
  }
  const std::string log = shot_dir + ".log";
  ASSIGN_OR_RETURN(Subprocess shooter,
                   Spawn({options_.screenshooter},
                         {"XDG_RUNTIME_DIR=" + dir_, "WAYLAND_DISPLAY=" + socket_}, shot_dir, log));
  const std::optional<int> waited = shooter.Wait(timeout);
  if (!waited) {
    shooter.Stop(absl::ZeroDuration());
    return absl::DeadlineExceededError(absl::StrCat(
        "weston-screenshooter did not finish within ",
        absl::FormatDuration(timeout), ": ", Tail(log, 1000)));
  }
  if (const int status = *waited; !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(
        "weston-screenshooter failed (", DescribeExit(status), "): ",
        Tail(log, 1000), "\nweston's log:\n", LogTail(1000)));
  }
  for (const fs::directory_entry& e : fs::directory_iterator(shot_dir, ec)) {
    if (e.path().extension() != ".png") continue;
    fs::copy_file(e.path(), png_path, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat(
          "cannot copy ", e.path().string(), " to ", png_path, ": ",
          ec.message()));
    }
    fs::remove_all(shot_dir, ec);
    return absl::OkStatus();
  }
  return absl::InternalError(absl::StrCat(
      "weston-screenshooter exited 0 but wrote no PNG in ", shot_dir, ": ",
      Tail(log, 1000)));
}

}  // namespace halloc::wayland
