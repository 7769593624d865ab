// halloc-wayland-show: shows hallocd buffers in a Wayland window.
//
// Takes --frames XRGB8888 frames of --width x --height from the camera
// library's synthetic source (clients/camera: colour bars scrolling left,
// the frame counter at the top left, in --buffers hallocd buffers) and
// presents each with clients/wayland's Presenter, paced by the
// compositor's frame callbacks; prints the frame rate it reached.
//
//   halloc-wayland-show                        # on $WAYLAND_DISPLAY
//   halloc-wayland-show --headless_png=out.png # own weston headless, then
//                                              # a screenshot of its output
//
// The camera is the producer; Presenter::Show is all a consumer needs.
// (tools/run demo runs the two in separate processes, frames shared
// read-only: clients/demo.)
#include <drm_fourcc.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "clients/camera/camera.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/wayland/presenter.h"
#include "clients/wayland/weston.h"

ABSL_FLAG(std::string, control_socket, "", "hallocd gRPC socket (default: $HALLOC_CONTROL_SOCKET, hallocd's default)");
ABSL_FLAG(std::string, broker_socket, "", "hallocd broker socket (default: $HALLOC_BROKER_SOCKET, hallocd's default)");
ABSL_FLAG(std::string, display, "", "Wayland socket name or path (default: $WAYLAND_DISPLAY)");
ABSL_FLAG(int, width, 640, "frame width");
ABSL_FLAG(int, height, 480, "frame height");
ABSL_FLAG(int, frames, 120, "frames to show");
ABSL_FLAG(int, buffers, 3, "buffers in the ring (at least 2: one stays on screen)");
ABSL_FLAG(bool, fullscreen, false, "ask for a fullscreen window");
ABSL_FLAG(std::string, headless_png, "",
          "start a weston headless of the frames' size instead of using "
          "--display, show the frames fullscreen there, and write a "
          "screenshot of its output to this PNG");

namespace halloc::wayland {
namespace {

absl::Status Run() {
  const int width = absl::GetFlag(FLAGS_width);
  const int height = absl::GetFlag(FLAGS_height);
  const std::string png = absl::GetFlag(FLAGS_headless_png);
  std::unique_ptr<Weston> weston;
  PresenterOptions options;
  options.display = absl::GetFlag(FLAGS_display);
  options.window.title = "halloc-wayland-show";
  options.window.fullscreen = absl::GetFlag(FLAGS_fullscreen);
  if (!png.empty()) {
    ASSIGN_OR_RETURN(weston, Weston::Start({.width = width, .height = height}));
    options.display = weston->socket();
    options.window.fullscreen = true;
  }
  ConnectOptions connect;
  connect.control_socket = absl::GetFlag(FLAGS_control_socket);
  connect.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  ASSIGN_OR_RETURN(Client client, Client::Connect(connect));
  camera::CameraOptions camera_options;
  camera_options.width = width;
  camera_options.height = height;
  camera_options.buffer_count = absl::GetFlag(FLAGS_buffers);
  camera_options.usage = usage::kComposerOverlay;
  camera_options.name = "wayland-show";
  camera_options.fps = 0;  // paced by the compositor
  ASSIGN_OR_RETURN(std::unique_ptr<camera::Camera> camera,
                   camera::Camera::OpenSynthetic(client, camera_options));
  ASSIGN_OR_RETURN(std::unique_ptr<Presenter> presenter,
                   Presenter::Create(options));
  const int frames = absl::GetFlag(FLAGS_frames);
  RETURN_IF_ERROR(camera->Start());
  const absl::Time start = absl::Now();
  // The frame on screen stays with us until the next one replaces it and
  // the compositor lets go of it (it reads our buffer itself on the
  // zero-copy paths).
  std::optional<camera::Frame> shown;
  for (int n = 0; n < frames && !presenter->window().close_requested(); ++n) {
    ASSIGN_OR_RETURN(camera::Frame frame, camera->Next());
    RETURN_IF_ERROR(presenter->Show(*frame.buffer));
    if (shown) {
      RETURN_IF_ERROR(presenter->WaitReleased(shown->buffer->id()));
      RETURN_IF_ERROR(camera->Requeue(shown->index));
    }
    shown = frame;
  }
  RETURN_IF_ERROR(presenter->WaitShown());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  printf("shown %d frames (%dx%d XRGB8888, %zu hallocd buffers, %s) in %.2f s: "
         "%.1f frames/s\n",
         frames, width, height, camera->buffers().size(),
         PathName(presenter->last_path()),
         seconds, frames / seconds);
  if (weston) {
    RETURN_IF_ERROR(weston->Screenshot(png));
    printf("screenshot of weston's output: %s\n", png.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace halloc::wayland

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status s = halloc::wayland::Run();
  if (!s.ok()) {
    fprintf(stderr, "halloc-wayland-show: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
