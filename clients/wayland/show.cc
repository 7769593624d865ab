// halloc-wayland-show: shows hallocd buffers in a Wayland window.
//
// Allocates --buffers XRGB8888 frames of --width x --height from hallocd,
// draws a moving test pattern (colour bars scrolling one bar per 8 frames,
// the frame number in binary along the top) into each in turn and presents
// it with clients/wayland's Presenter, paced by the compositor's frame
// callbacks; prints the frame rate it reached.
//
//   halloc-wayland-show                        # on $WAYLAND_DISPLAY
//   halloc-wayland-show --headless_png=out.png # own weston headless, then
//                                              # a screenshot of its output
//
// Its drawing part is the stand-in for a producer (a camera); Present is
// all a consumer needs.
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
ABSL_FLAG(int, buffers, 3, "buffers in the ring");
ABSL_FLAG(bool, fullscreen, false, "ask for a fullscreen window");
ABSL_FLAG(std::string, headless_png, "",
          "start a weston headless of the frames' size instead of using "
          "--display, show the frames fullscreen there, and write a "
          "screenshot of its output to this PNG");

namespace halloc::wayland {
namespace {

constexpr uint32_t kBars[] = {0xffffff, 0xffff00, 0x00ffff, 0x00ff00,
                              0xff00ff, 0xff0000, 0x0000ff, 0x000000};

// The producer's part: a moving pattern in an XRGB8888 frame.
absl::Status Draw(const Buffer& frame, uint32_t n) {
  ASSIGN_OR_RETURN(Mapping map, frame.Map(Access::kReadWrite));
  const v1::BufferLayout& l = frame.layout();
  const v1::PlaneLayout& plane = l.planes(0);
  const uint32_t bar_width = std::max(1u, l.width() / 8);
  const uint32_t block = std::max(1u, l.width() / 32);
  for (uint32_t y = 0; y < l.height(); ++y) {
    auto* row = reinterpret_cast<uint32_t*>(map.as<uint8_t>() + plane.offset() +
                                            y * plane.stride());
    for (uint32_t x = 0; x < l.width(); ++x) {
      uint32_t c = kBars[(x / bar_width + n / 8) % 8];
      if (y < block && x / block < 32) {  // frame number, bit 31 first
        c = (n >> (31 - x / block)) & 1 ? 0xffffff : 0x404040;
      }
      row[x] = 0xff000000u | c;
    }
  }
  return absl::OkStatus();
}

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
  ASSIGN_OR_RETURN(
      std::vector<Buffer> ring,
      client.Allocate(ImageDescriptor(width, height, DRM_FORMAT_XRGB8888,
                                      usage::kCpuWriteOften |
                                          usage::kComposerOverlay,
                                      "wayland-show"),
                      absl::GetFlag(FLAGS_buffers)));
  ASSIGN_OR_RETURN(std::unique_ptr<Presenter> presenter,
                   Presenter::Create(options));
  const int frames = absl::GetFlag(FLAGS_frames);
  const absl::Time start = absl::Now();
  for (int n = 0; n < frames && !presenter->window().close_requested(); ++n) {
    const Buffer& frame = ring[n % ring.size()];
    RETURN_IF_ERROR(Draw(frame, n));
    RETURN_IF_ERROR(presenter->Show(frame));
  }
  RETURN_IF_ERROR(presenter->WaitShown());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  printf("shown %d frames (%dx%d XRGB8888, %zu hallocd buffers, %s) in %.2f s: "
         "%.1f frames/s\n",
         frames, width, height, ring.size(),
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
