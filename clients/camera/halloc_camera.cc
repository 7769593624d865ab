// halloc-camera: capture frames from a V4L2 device (or the synthetic
// source) into hallocd buffers and print frames per second.
//
//   halloc-camera --device=/dev/video0 --frames=60 --format=XR24
//   halloc-camera --synthetic --frames=30 --write=/tmp/frame.raw
//   halloc-camera --synthetic --share_to=compositor   # one grant per frame
//
// With --share_to (a policy client name) or --share_uid, each frame is
// shared (read-only unless --share_rights=read_write) and one line
// "frame SEQ buffer ID grant TOKEN" is printed per frame. A shared frame
// is lent (loans.h): its buffer goes back to the source, which writes the
// next frames into it, only once the consumer imported it and let go, or
// after --share_timeout; its grant is revoked first either way. When every
// buffer is lent, capture waits for one to come back, and at the end for
// all of them. --write saves
// the raw bytes (halloc's layout: see the printed format line) of frame
// --write_frame (default: the last one).
// Exit codes: 0 done, 1 hallocd or the device refused, 2 bad command line.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <limits>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "clients/camera/camera.h"
#include "clients/camera/formats.h"
#include "clients/camera/loans.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "service/layout/format.h"

ABSL_FLAG(std::string, device, "", "V4L2 capture node, e.g. /dev/video0");
ABSL_FLAG(bool, synthetic, false, "use the synthetic source (moving colour bars)");
ABSL_FLAG(int, frames, 30, "frames to capture");
ABSL_FLAG(std::string, format, "XRGB8888", "DRM format: XRGB8888 (XR24), YUYV, NV12, ...");
ABSL_FLAG(uint32_t, width, 640, "frame width");
ABSL_FLAG(uint32_t, height, 480, "frame height");
ABSL_FLAG(uint32_t, buffers, 4, "buffers to allocate");
ABSL_FLAG(std::string, usage, "", "usage beyond camera_output, e.g. composer_overlay");
ABSL_FLAG(double, fps, 30, "frames per second to ask for (synthetic: 0 is unpaced)");
ABSL_FLAG(std::string, write, "", "write one frame's raw bytes to this file");
ABSL_FLAG(int, write_frame, -1, "which frame --write saves (default: the last)");
ABSL_FLAG(std::string, share_to, "", "share each frame with this policy client");
ABSL_FLAG(int64_t, share_uid, -1, "share each frame with this uid");
ABSL_FLAG(std::string, share_rights, "read", "rights of the grants: read or read_write");
ABSL_FLAG(absl::Duration, share_timeout, absl::Seconds(1),
          "how long a consumer has to import a shared frame and let go of it");
ABSL_FLAG(std::string, control_socket, "", "hallocd gRPC socket");
ABSL_FLAG(std::string, broker_socket, "", "hallocd broker socket");

namespace halloc::camera {
namespace {

absl::Status WriteFrame(const Frame& frame, const std::string& path) {
  ASSIGN_OR_RETURN(Mapping map, frame.buffer->Map(Access::kRead));
  UniqueFd out(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out.is_valid()) return ErrnoStatus(errno, absl::StrCat("open ", path));
  const size_t len = frame.buffer->layout().size();
  size_t done = 0;
  while (done < len) {
    const ssize_t n = write(out.get(), map.as<uint8_t>() + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(errno, absl::StrCat("write ", path));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Grant> ShareFrame(Camera& camera, const Frame& frame,
                                     v1::CpuAccess rights) {
  const std::string to = absl::GetFlag(FLAGS_share_to);
  if (!to.empty()) return camera.ShareWithClient(frame, to, rights);
  return camera.ShareWithUid(frame, static_cast<uid_t>(absl::GetFlag(FLAGS_share_uid)),
                             rights);
}

// Requeues the lent frames whose loans ended; with `wait`, polls until at
// least one has (every buffer is lent: the source has none to fill).
absl::Status GiveBack(FrameLoans& loans, Camera& camera, bool wait) {
  while (true) {
    ASSIGN_OR_RETURN(std::vector<FrameLoans::Return> back, loans.Collect(absl::Now()));
    for (const FrameLoans::Return& r : back) {
      if (r.still_held) {
        absl::FPrintF(stderr,
                      "frame %u: a consumer still had it when %s; its grant is revoked (which "
                      "cuts the consumer off only where the backend revokes live: halloc) and "
                      "the source writes into it again\n",
                      r.sequence, r.timed_out ? "--share_timeout ran out" : "it was taken back");
      }
      RETURN_IF_ERROR(camera.Requeue(r.index));
    }
    if (!wait || !back.empty()) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(2));
  }
}

absl::Status Run(const CameraOptions& options, v1::CpuAccess rights) {
  ConnectOptions connect;
  connect.control_socket = absl::GetFlag(FLAGS_control_socket);
  connect.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  ASSIGN_OR_RETURN(Client client, Client::Connect(connect));
  ASSIGN_OR_RETURN(std::unique_ptr<Camera> camera, Camera::Open(client, options));
  const StreamFormat& f = camera->format();
  const v1::BufferLayout& layout = camera->buffers()[0].layout();
  absl::PrintF(
      "%s%s: %s %ux%u, bytesperline %u, sizeimage %u, %u buffers of %u bytes "
      "(%s), %s\n",
      camera->Describe(), f.multiplanar_api ? " (multi-planar API)" : "",
      format::Name(f.drm_format), f.width, f.height, f.bytesperline, f.sizeimage,
      camera->buffers().size(), camera->buffers()[0].size(),
      camera->buffers()[0].info().backend(),
      f.fps > 0 ? absl::StrFormat("%.1f fps", f.fps) : "unpaced");
  const bool share =
      !absl::GetFlag(FLAGS_share_to).empty() || absl::GetFlag(FLAGS_share_uid) >= 0;
  const int frames = absl::GetFlag(FLAGS_frames);
  const std::string write_path = absl::GetFlag(FLAGS_write);
  const int write_frame =
      absl::GetFlag(FLAGS_write_frame) < 0 ? frames - 1 : absl::GetFlag(FLAGS_write_frame);
  FrameLoans loans(client, absl::GetFlag(FLAGS_share_timeout));
  RETURN_IF_ERROR(camera->Start());
  absl::Time start;
  for (int i = 0; i < frames; ++i) {
    RETURN_IF_ERROR(GiveBack(loans, *camera, loans.size() == camera->buffers().size()));
    ASSIGN_OR_RETURN(Frame frame, camera->Next());
    if (i == 0) start = absl::Now();  // the first frame includes start-up
    if (!write_path.empty() && i == write_frame) {
      RETURN_IF_ERROR(WriteFrame(frame, write_path));
      absl::PrintF("wrote frame %u (%u bytes, %s, plane 0 stride %u) to %s\n",
                   frame.sequence, layout.size(), format::Name(layout.format()),
                   layout.planes(0).stride(), write_path);
    }
    if (!share) {
      RETURN_IF_ERROR(camera->Requeue(frame.index));
      continue;
    }
    ASSIGN_OR_RETURN(v1::Grant grant, loans.Lend(frame, absl::Now(), [&] {
      return ShareFrame(*camera, frame, rights);
    }));
    absl::PrintF("frame %u buffer %u grant %s\n", frame.sequence, frame.buffer->id(),
                 grant.token());
    std::fflush(stdout);  // a consumer reading a pipe needs the line now
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  // The last frames' consumers may still be on their way: their grants
  // would go with this session.
  while (loans.size() > 0) RETURN_IF_ERROR(GiveBack(loans, *camera, true));
  RETURN_IF_ERROR(camera->Stop());
  if (frames > 1) {
    absl::PrintF("%d frames in %.3f s: %.1f frames per second\n", frames, seconds,
                 (frames - 1) / seconds);
  } else {
    absl::PrintF("%d frames\n", frames);
  }
  return absl::OkStatus();
}

// The options from the flags, or an error for a bad command line.
absl::StatusOr<CameraOptions> OptionsFromFlags(v1::CpuAccess* rights) {
  CameraOptions o;
  o.device = absl::GetFlag(FLAGS_device);
  if (o.device.empty() == !absl::GetFlag(FLAGS_synthetic)) {
    return absl::InvalidArgumentError("give exactly one of --device or --synthetic");
  }
  ASSIGN_OR_RETURN(o.format, format::ParseName(absl::GetFlag(FLAGS_format)));
  ASSIGN_OR_RETURN(o.usage, usage::Parse(absl::GetFlag(FLAGS_usage)));
  if (!absl::GetFlag(FLAGS_write).empty()) o.usage |= usage::kCpuReadOften;
  o.width = absl::GetFlag(FLAGS_width);
  o.height = absl::GetFlag(FLAGS_height);
  o.buffer_count = absl::GetFlag(FLAGS_buffers);
  o.fps = absl::GetFlag(FLAGS_fps);
  if (absl::GetFlag(FLAGS_frames) < 1) {
    return absl::InvalidArgumentError("--frames must be at least 1");
  }
  if (absl::GetFlag(FLAGS_share_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--share_timeout must be positive");
  }
  // A frame the run never reaches would write nothing, and say nothing.
  if (!absl::GetFlag(FLAGS_write).empty() &&
      absl::GetFlag(FLAGS_write_frame) >= absl::GetFlag(FLAGS_frames)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--write_frame=", absl::GetFlag(FLAGS_write_frame),
                     " is past the last of --frames=", absl::GetFlag(FLAGS_frames), " (0-based)"));
  }
  // A uid is 32 bits, (uid_t)-1 none: a larger value would wrap to another
  // (4294967296: root).
  if (const int64_t uid = absl::GetFlag(FLAGS_share_uid);
      uid < -1 || uid >= int64_t{std::numeric_limits<uid_t>::max()}) {
    return absl::InvalidArgumentError(absl::StrCat("--share_uid=", uid, " is no uid (0 to ",
                                                   std::numeric_limits<uid_t>::max() - 1,
                                                   ", or -1: none)"));
  }
  const std::string r = absl::GetFlag(FLAGS_share_rights);
  if (r == "read") {
    *rights = v1::CPU_ACCESS_READ;
  } else if (r == "read_write") {
    *rights = v1::CPU_ACCESS_READ_WRITE;
  } else {
    return absl::InvalidArgumentError("--share_rights is read or read_write");
  }
  return o;
}

}  // namespace
}  // namespace halloc::camera

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "halloc-camera (--device=/dev/videoN | --synthetic) [--frames=N] "
      "[--format=XRGB8888] [--write=FILE] [--share_to=CLIENT]");
  absl::ParseCommandLine(argc, argv);
  halloc::v1::CpuAccess rights = halloc::v1::CPU_ACCESS_READ;
  absl::StatusOr<halloc::camera::CameraOptions> options =
      halloc::camera::OptionsFromFlags(&rights);
  if (!options.ok()) {
    absl::FPrintF(stderr, "halloc-camera: %s\n", options.status().message());
    return 2;
  }
  absl::Status s = halloc::camera::Run(*options, rights);
  if (!s.ok()) {
    absl::FPrintF(stderr, "halloc-camera: %s\n", s.ToString());
    return 1;
  }
  return 0;
}
