// The demo pipeline (issue 13): a camera (clients/camera, the synthetic
// source) fills hallocd buffers and shares each frame read-only with a
// viewer, a separate process that imports it and presents it to a Wayland
// compositor (clients/wayland's Presenter); weston headless's screenshot
// is then checked against what the camera drew.
//
//   camera process                       viewer process (ViewerProcess)
//   Camera::Next ─ ShareWithUid(READ) ─► Import(token): same inode? a
//     "frame SEQ INDEX INODE TOKEN"        writable mmap refused?
//                                          Presenter::Show (wl_shm copy on
//   Requeue(INDEX) ◄───── "done INDEX" ─   a read-only memfd frame)
//   ... N frames, then "end" ──────────► WaitShown; "shown N SAME RO PATH"
//   (screenshot of weston here)          stays on screen until "quit"
//
// Used by `halloc_demo` (tools/run demo) and pipeline_test. The channel is
// a SOCK_SEQPACKET socketpair, one text message per packet; every wait on
// it is bounded by PipelineOptions::timeout.
#ifndef HALLOC_CLIENTS_DEMO_PIPELINE_H_
#define HALLOC_CLIENTS_DEMO_PIPELINE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"
#include "clients/png/png.h"

namespace halloc::demo {

struct PipelineOptions {
  uint32_t width = 640;
  uint32_t height = 480;
  int frames = 60;
  uint32_t buffers = 4;
  // The camera's pace; 0: as fast as the viewer gives frames back.
  double fps = 0;
  // The longest wait for any one message of the viewer.
  absl::Duration timeout = absl::Seconds(10);
};

// A viewer: `binary --role=viewer` (halloc_demo), forked and exec'ed with
// the channel's other end, hallocd's sockets and the Wayland socket. It
// dies with its parent (PR_SET_PDEATHSIG); the destructor kills (SIGKILL)
// and reaps it if Finish did not.
class ViewerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ViewerProcess>> Spawn(const std::string& binary,
                                                              const ConnectOptions& hallocd,
                                                              const std::string& wayland_display);
  ViewerProcess(const ViewerProcess&) = delete;
  ViewerProcess& operator=(const ViewerProcess&) = delete;

  int channel() const { return channel_.get(); }
  pid_t pid() const { return process_.pid(); }
  // Tells the viewer to quit and reaps it: OK if it exited with 0.
  absl::Status Finish(absl::Duration timeout);

 private:
  ViewerProcess() = default;
  UniqueFd channel_;
  Subprocess process_;
};

struct PipelineResult {
  std::string camera;          // "synthetic: XRGB8888 640x480, ..."
  int frames = 0;              // shown by the viewer
  uint32_t last_sequence = 0;  // the camera's counter of the last frame
  double seconds = 0;          // first frame taken .. last frame shown
  double frames_per_second = 0;
  int same_memory = 0;    // imports whose inode was the camera's buffer's
  int write_refused = 0;  // imports whose writable mmap failed
  std::string path;       // how the viewer's frames reached the compositor
};

// The camera side: opens the synthetic camera on `client`, streams
// options.frames frames, shares each read-only with the viewer's uid and
// sends it, requeues what the viewer gives back, and returns once the
// viewer reports the last frame shown (it stays on screen until
// ViewerProcess::Finish). INTERNAL with the viewer's message if it failed,
// DEADLINE_EXCEEDED if it went quiet for options.timeout.
absl::StatusOr<PipelineResult> RunCamera(Client& client, ViewerProcess& viewer,
                                         const PipelineOptions& options);

// The viewer side, in the viewer process: serves `channel` until "quit".
absl::Status RunViewer(int channel, const ConnectOptions& hallocd,
                       const std::string& wayland_display);

// What a screenshot of the output shows against frame `sequence` of the
// synthetic camera (clients/camera/pattern.h), drawn at `width`x`height`.
struct ScreenCheck {
  int bar_probes = 0;
  int bar_mismatches = 0;
  std::string first_mismatch;  // "pixel (x, y) #ffrrggbb, bar B #ffrrggbb"
  absl::StatusOr<uint32_t> counter = absl::UnknownError("not read");
  bool ok(uint32_t sequence) const {
    return bar_probes > 0 && bar_mismatches == 0 && counter.ok() && *counter == sequence;
  }
};
ScreenCheck CheckScreen(const png::Image& shot, uint32_t width, uint32_t height, uint32_t sequence);

}  // namespace halloc::demo

#endif  // HALLOC_CLIENTS_DEMO_PIPELINE_H_
