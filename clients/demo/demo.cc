// halloc_demo: the camera → hallocd → Wayland pipeline (pipeline.h). Run by
// `tools/run demo`, which starts hallocd first.
//
// This process is the camera: it starts its own weston headless (its own
// XDG_RUNTIME_DIR, killed with this process), execs itself as the viewer
// (--role=viewer, a separate process and hallocd session), streams
// --frames synthetic XRGB8888 frames through hallocd to it, each shared
// read-only, then takes weston's screenshot, writes it to --png, checks the
// colour bars and the frame counter in it against the last frame, and
// prints one verdict line with the pipeline's frames per second.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/client.h"
#include "clients/demo/pipeline.h"
#include "clients/png/png.h"
#include "clients/wayland/weston.h"

ABSL_FLAG(std::string, control_socket, "", "hallocd gRPC socket");
ABSL_FLAG(std::string, broker_socket, "", "hallocd broker socket");
ABSL_FLAG(int, frames, 60, "frames to stream");
ABSL_FLAG(uint32_t, width, 640, "frame width");
ABSL_FLAG(uint32_t, height, 480, "frame height");
ABSL_FLAG(double, fps, 0, "the camera's pace (0: as fast as the viewer takes frames)");
ABSL_FLAG(std::string, png, "pipeline.png", "where to write weston's screenshot");
ABSL_FLAG(std::string, role, "camera", "camera, or viewer (internal)");
ABSL_FLAG(int, channel_fd, -1, "viewer: the camera's channel (internal)");
ABSL_FLAG(std::string, display, "", "viewer: the Wayland socket (internal)");

namespace halloc::demo {
namespace {

ConnectOptions Hallocd() {
  ConnectOptions o;
  o.control_socket = absl::GetFlag(FLAGS_control_socket);
  o.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  return o;
}

// Runs the pipeline and prints its verdict: whether every check passed.
absl::StatusOr<bool> Run() {
  PipelineOptions options;
  options.frames = absl::GetFlag(FLAGS_frames);
  options.width = absl::GetFlag(FLAGS_width);
  options.height = absl::GetFlag(FLAGS_height);
  options.fps = absl::GetFlag(FLAGS_fps);
  ASSIGN_OR_RETURN(Client client, Client::Connect(Hallocd()));
  absl::PrintF("[camera pid %d] hallocd session %d, uid %d\n", getpid(), client.session_id(),
               client.uid());
  ASSIGN_OR_RETURN(std::unique_ptr<wayland::Weston> weston,
                   wayland::Weston::Start({.width = static_cast<int>(options.width),
                                           .height = static_cast<int>(options.height)}));
  absl::PrintF("[weston pid %d] headless %ux%u, pixman renderer, socket %s\n", weston->pid(),
               options.width, options.height, weston->socket());
  ASSIGN_OR_RETURN(std::unique_ptr<ViewerProcess> viewer,
                   ViewerProcess::Spawn("/proc/self/exe", Hallocd(), weston->socket()));
  absl::PrintF("[viewer pid %d] imports each frame and presents it to weston\n", viewer->pid());
  ASSIGN_OR_RETURN(PipelineResult r, RunCamera(client, *viewer, options));
  absl::PrintF("[camera] %s; %d frames shared read-only, one grant each\n", r.camera,
               options.frames);
  absl::PrintF(
      "[viewer] %d frames imported and shown (%s); same memory as the camera's buffer: "
      "%d/%d; writable mapping refused: %d/%d\n",
      r.frames, r.path, r.same_memory, r.frames, r.write_refused, r.frames);
  const std::string png_path = absl::GetFlag(FLAGS_png);
  RETURN_IF_ERROR(weston->Screenshot(png_path));
  ASSIGN_OR_RETURN(png::Image shot, png::ReadPng(png_path));
  const ScreenCheck check = CheckScreen(shot, options.width, options.height, r.last_sequence);
  absl::PrintF("[weston] screenshot %s: bars %d/%d pixels as drawn%s, counter %s\n", png_path,
               check.bar_probes - check.bar_mismatches, check.bar_probes,
               check.first_mismatch.empty() ? "" : " (first wrong: " + check.first_mismatch + ")",
               check.counter.ok() ? absl::StrFormat("%08u", *check.counter)
                                  : check.counter.status().ToString());
  RETURN_IF_ERROR(viewer->Finish(absl::Seconds(5)));
  const bool ok = check.ok(r.last_sequence) && r.frames == options.frames &&
                  r.same_memory == r.frames && r.write_refused == r.frames;
  absl::PrintF(
      "demo %s: %d frames camera → hallocd → viewer → weston at %.1f frames/s; the screenshot "
      "shows frame %u (%s, counter %s); the viewer's imports were read-only (%d/%d writes "
      "refused) over the camera's own pages (%d/%d same inode), shown by %s\n",
      ok ? "OK" : "FAILED", r.frames, r.frames_per_second, r.last_sequence,
      check.bar_mismatches == 0 ? "colour bars where drawn" : "BARS WRONG",
      check.counter.ok() && *check.counter == r.last_sequence ? "matches" : "WRONG",
      r.write_refused, r.frames, r.same_memory, r.frames, r.path);
  absl::PrintF("picture: %s\n", png_path);
  return ok;
}

}  // namespace
}  // namespace halloc::demo

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (absl::GetFlag(FLAGS_role) == "viewer") {
    absl::Status s = halloc::demo::RunViewer(absl::GetFlag(FLAGS_channel_fd),
                                             halloc::demo::Hallocd(), absl::GetFlag(FLAGS_display));
    if (!s.ok()) absl::FPrintF(stderr, "halloc_demo viewer: %s\n", s.ToString());
    return s.ok() ? 0 : 1;
  }
  absl::StatusOr<bool> ok = halloc::demo::Run();
  if (!ok.ok()) absl::PrintF("demo FAILED: %s\n", ok.status().ToString());
  return ok.ok() && *ok ? 0 : 1;
}
