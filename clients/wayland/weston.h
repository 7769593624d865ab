// Weston: Debian's weston running headless (pixman renderer, desktop shell),
// owned by this process, and screenshots of its output. For tests and
// demos that need a real compositor without a display.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Weston> weston,
//                    Weston::Start({.width = 320, .height = 240}));
//   ... Presenter::Create({.display = weston->socket()}) ...
//   RETURN_IF_ERROR(weston->Screenshot("/tmp/out.png"));
//
// weston runs in its own XDG_RUNTIME_DIR (a fresh 0700 directory under
// /tmp, removed on destruction) with a socket path that is unique to it,
// and dies with its parent (PR_SET_PDEATHSIG); the destructor stops it
// (SIGTERM, then SIGKILL after a second) and reaps it. The shell draws
// nothing of its own (no panel, black background, no animations), so a
// fullscreen window (WindowOptions::fullscreen) with a frame of the
// output's size covers the output exactly at (0, 0). --debug enables
// weston_screenshooter, which weston-screenshooter uses.
//
// Status codes: NOT_FOUND — weston or weston-screenshooter is not
// installed (tools/run setup installs them); UNAVAILABLE — weston exited
// or its socket did not appear in time (the message has its log's tail);
// DEADLINE_EXCEEDED — weston-screenshooter did not finish in time.
#ifndef HALLOC_CLIENTS_WAYLAND_WESTON_H_
#define HALLOC_CLIENTS_WAYLAND_WESTON_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/subprocess.h"

namespace halloc::wayland {

struct WestonOptions {
  int width = 320;
  int height = 240;
  // The weston binary; its modules come from its own install.
  std::string binary = "/usr/bin/weston";
  std::string screenshooter = "/usr/bin/weston-screenshooter";
  // The longest wait for weston's socket.
  absl::Duration start_timeout = absl::Seconds(10);
};

class Weston {
 public:
  static absl::StatusOr<std::unique_ptr<Weston>> Start(
      const WestonOptions& options = {});
  ~Weston();
  Weston(const Weston&) = delete;
  Weston& operator=(const Weston&) = delete;

  // The absolute path of the socket: pass it as a Display name or as
  // WAYLAND_DISPLAY.
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return process_.pid(); }
  // The last `max_bytes` of weston's log.
  std::string LogTail(size_t max_bytes = 2000) const;

  // Writes a PNG of the whole output to `png_path` (weston-screenshooter,
  // `timeout` at most).
  absl::Status Screenshot(const std::string& png_path,
                          absl::Duration timeout = absl::Seconds(10));

 private:
  Weston() = default;
  // Starts `argv` with our environment (less any Wayland session) plus
  // `env`, in `cwd`, its output appended to `log`, its stdin /dev/null.
  static absl::StatusOr<Subprocess> Spawn(const std::vector<std::string>& argv,
                                     const std::vector<std::string>& env,
                                     const std::string& cwd,
                                     const std::string& log);

  WestonOptions options_;
  std::string dir_;     // XDG_RUNTIME_DIR
  std::string socket_;  // dir_ + "/wayland-halloc"
  std::string log_;     // dir_ + "/weston.log"
  Subprocess process_;
  int shots_ = 0;
};

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_WESTON_H_
