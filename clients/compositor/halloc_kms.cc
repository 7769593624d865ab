// halloc-kms: hallocd frames on a KMS display. Allocates an XRGB8888 frame
// with colour bars for the primary plane and a solid square for the overlay
// plane, shows them for --frames page flips, and with --png captures the
// composed output through the writeback connector into a hallocd buffer and
// writes it as PNG. Prints frames per second.
//
//   halloc-kms [--driver=vkms] [--frames=60] [--png=/tmp/kms.png]
#include <drm_fourcc.h>

#include <cstdio>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/compositor/kms.h"
#include "clients/compositor/pattern.h"
#include "clients/png/png.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"

ABSL_FLAG(std::string, driver, "vkms", "DRM driver name of the display device");
ABSL_FLAG(int, frames, 60, "page flips to show");
ABSL_FLAG(uint32_t, width, 640, "mode width (0: the preferred mode)");
ABSL_FLAG(uint32_t, height, 480, "mode height");
ABSL_FLAG(std::string, png, "", "write the writeback capture here as PNG");

namespace halloc::compositor {
namespace {

absl::Status Run() {
  DisplayOptions options;
  options.width = absl::GetFlag(FLAGS_width);
  options.height = absl::GetFlag(FLAGS_height);
  ASSIGN_OR_RETURN(KmsDisplay display, KmsDisplay::Open(absl::GetFlag(FLAGS_driver), options));
  ASSIGN_OR_RETURN(Client client, Client::Connect());
  const uint32_t w = display.width(), h = display.height();
  const uint64_t frame_usage = usage::kCpuWriteOften | usage::kComposerOverlay;
  ASSIGN_OR_RETURN(Buffer bars, client.Allocate(ImageDescriptor(w, h, DRM_FORMAT_XRGB8888,
                                                                frame_usage, "kms-bars")));
  RETURN_IF_ERROR(FillBars(bars));
  ASSIGN_OR_RETURN(Framebuffer bars_fb, display.Import(bars));
  std::optional<Buffer> square;
  std::optional<Framebuffer> square_fb;
  const Rect square_dst = {int32_t(w / 4), int32_t(h / 4), w / 4, h / 4};
  if (display.has_overlay()) {
    ASSIGN_OR_RETURN(
        square, client.Allocate(ImageDescriptor(square_dst.width, square_dst.height,
                                                DRM_FORMAT_XRGB8888, frame_usage, "kms-overlay")));
    RETURN_IF_ERROR(FillSolid(*square, 0xff804020));
    ASSIGN_OR_RETURN(square_fb, display.Import(*square));
  }
  const PlaneFrame primary{bars, bars_fb, display.FullScreen()};
  std::optional<PlaneFrame> overlay;
  if (square) overlay.emplace(PlaneFrame{*square, *square_fb, square_dst});

  const int frames = absl::GetFlag(FLAGS_frames);
  RETURN_IF_ERROR(display.Present(primary, overlay ? &*overlay : nullptr));  // the modeset
  const absl::Time start = absl::Now();
  for (int i = 0; i < frames; ++i) {
    RETURN_IF_ERROR(display.Present(primary, overlay ? &*overlay : nullptr));
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("%d page flips on %s (%ux%u, %s) in %.3f s: %.1f frames/s\n", frames,
              absl::GetFlag(FLAGS_driver).c_str(), w, h,
              overlay ? "primary + overlay" : "primary only", secs, frames / secs);

  const std::string png = absl::GetFlag(FLAGS_png);
  if (png.empty()) return absl::OkStatus();
  if (!display.has_writeback()) {
    return absl::FailedPreconditionError("--png: the display has no writeback connector");
  }
  ASSIGN_OR_RETURN(Buffer out,
                   client.Allocate(ImageDescriptor(
                       w, h, DRM_FORMAT_XRGB8888,
                       usage::kCpuReadOften | usage::kComposerClientTarget, "kms-writeback")));
  ASSIGN_OR_RETURN(Framebuffer out_fb, display.Import(out));
  const WritebackFrame capture{out, out_fb};
  RETURN_IF_ERROR(display.Present(primary, overlay ? &*overlay : nullptr, &capture));
  ASSIGN_OR_RETURN(Mapping map, out.Map(Access::kRead));
  const v1::PlaneLayout& p = out.layout().planes(0);
  // The capture's rows as its layout places them, all of them mapped (the
  // daemon's word is checked, not trusted: a lying stride read past it).
  ASSIGN_OR_RETURN(const uint8_t* rows, map.Rows(p.offset(), p.stride(), uint64_t{4} * w, h));
  RETURN_IF_ERROR(png::WritePng(png, rows, w, h, p.stride()));
  std::printf("writeback capture: %s\n", png.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace halloc::compositor

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status s = halloc::compositor::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "halloc-kms: %s\n", std::string(s.ToString()).c_str());
    return 1;
  }
  return 0;
}
