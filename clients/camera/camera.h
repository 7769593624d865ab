// libhalloc-camera: frames from a V4L2 capture device (or a synthetic
// source where there is none) in buffers that hallocd allocated.
//
//   ASSIGN_OR_RETURN(halloc::Client client, halloc::Client::Connect());
//   halloc::camera::CameraOptions options;
//   options.device = "/dev/video0";          // empty: the synthetic source
//   ASSIGN_OR_RETURN(std::unique_ptr<halloc::camera::Camera> cam,
//                    halloc::camera::Camera::Open(client, options));
//   RETURN_IF_ERROR(cam->Start());
//   ASSIGN_OR_RETURN(halloc::camera::Frame frame, cam->Next());
//   ASSIGN_OR_RETURN(halloc::v1::Grant grant,
//                    cam->ShareWithClient(frame, "compositor",
//                                         halloc::v1::CPU_ACCESS_READ));
//   ... send grant.token() to the compositor; when it is done with it:
//   RETURN_IF_ERROR(cam->Requeue(frame.index));
//
// The V4L2 source negotiates the format (S_FMT with halloc's stride as
// bytesperline), allocates the buffers from hallocd with an image
// descriptor for exactly that format (usage camera_output plus the
// caller's), checks that the driver's bytesperline/sizeimage agree with
// hallocd's layout (FAILED_PRECONDITION naming both when not), and streams
// into them with V4L2_MEMORY_DMABUF, single- or multi-planar API (one
// memory plane). It needs dma-bufs: on a memfd backend it fails with
// FAILED_PRECONDITION; use the synthetic source there.
//
// The synthetic source (pattern.h: scrolling colour bars with the frame
// counter) draws with the CPU into the same kind of buffers, paced at
// `fps`, so everything downstream of a Camera runs on any machine.
//
// Consumers need only the Buffer (its layout() and fd()), never this
// library. Thread-safety: Next and Requeue may be called from different
// threads (a consumer thread gives frames back); Start/Stop/destruction
// must not race with them.
#ifndef HALLOC_CLIENTS_CAMERA_CAMERA_H_
#define HALLOC_CLIENTS_CAMERA_CAMERA_H_

#include <drm_fourcc.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::camera {

// The most buffers a camera takes.
inline constexpr uint32_t kMaxBuffers = 32;

struct CameraOptions {
  // A V4L2 capture node (/dev/videoN); empty for the synthetic source.
  std::string device;
  // DRM fourcc (formats.h); XRGB8888 is what every consumer takes.
  uint32_t format = DRM_FORMAT_XRGB8888;
  uint32_t width = 640;
  uint32_t height = 480;
  uint32_t buffer_count = 4;
  // Usage bits beyond camera_output (e.g. composer_overlay, cpu_read_often).
  uint64_t usage = 0;
  // Buffer names in hallocd (shown in listings).
  std::string name = "camera-frame";
  // Frames per second: the synthetic source's pace (0: as fast as it can
  // draw); asked of a V4L2 driver that can set it (VIDIOC_S_PARM, which
  // picks the nearest rate it has; 0: leave the driver's).
  double fps = 30;
};

// What was negotiated: the DRM fourcc and size every buffer has, and what
// the driver said about a row and a frame (equal to halloc's layout).
struct StreamFormat {
  uint32_t drm_format = 0;
  uint32_t v4l2_format = 0;  // 0 for the synthetic source
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t bytesperline = 0;
  uint32_t sizeimage = 0;
  // V4L2's multi-planar API (one memory plane) rather than single-planar.
  bool multiplanar_api = false;
  // Frames per second the source says it runs at (0: it does not say).
  double fps = 0;
};

// A filled frame, held by the caller until Requeue(index).
struct Frame {
  uint32_t index = 0;       // which of buffers()
  uint32_t sequence = 0;    // the source's frame counter
  absl::Duration timestamp;  // CLOCK_MONOTONIC, when the frame was taken
  uint32_t bytesused = 0;
  const Buffer* buffer = nullptr;  // owned by the Camera
};

class Camera {
 public:
  // OpenV4l2 if options.device is set, else OpenSynthetic. `client` must
  // outlive the Camera (its buffers are released through it).
  static absl::StatusOr<std::unique_ptr<Camera>> Open(
      Client& client, const CameraOptions& options);
  // NOT_FOUND: no such node; INVALID_ARGUMENT: not a V4L2 capture device
  // with streaming, an unknown format, zero size; FAILED_PRECONDITION: the
  // device does not offer the format, the driver's layout and halloc's
  // disagree, or the buffers are not dma-bufs.
  static absl::StatusOr<std::unique_ptr<Camera>> OpenV4l2(
      Client& client, const CameraOptions& options);
  static absl::StatusOr<std::unique_ptr<Camera>> OpenSynthetic(
      Client& client, const CameraOptions& options);

  virtual ~Camera();
  Camera(const Camera&) = delete;
  Camera& operator=(const Camera&) = delete;

  // "vivid (/dev/video0)" or "synthetic".
  virtual std::string Describe() const = 0;
  const StreamFormat& format() const { return format_; }
  const std::vector<Buffer>& buffers() const { return buffers_; }

  virtual absl::Status Start() = 0;
  virtual absl::Status Stop() = 0;
  // The next filled frame; DEADLINE_EXCEEDED after `timeout`,
  // FAILED_PRECONDITION when not streaming or every buffer is held.
  virtual absl::StatusOr<Frame> Next(absl::Duration timeout = absl::Seconds(5)) = 0;
  // Gives frame `index` back to the source. FAILED_PRECONDITION if the
  // caller does not hold it.
  virtual absl::Status Requeue(uint32_t index) = 0;
  // Frames the source marked corrupt (V4L2_BUF_FLAG_ERROR: a recoverable
  // streaming error) or delivered short (bytesused under the negotiated
  // sizeimage: a transfer cut off) that Next passed over: their buffers
  // went straight back to the source, never to the caller.
  virtual uint64_t skipped_error_frames() const { return 0; }

  // Grants a consumer access to `frame`'s buffer (hallocd's Share): to the
  // client the policy calls `peer_name`, or to any session of `peer_uid`,
  // with CPU rights `cpu` (read-only for a display). The grant's token is
  // what the consumer Imports.
  absl::StatusOr<v1::Grant> ShareWithClient(const Frame& frame,
                                            absl::string_view peer_name,
                                            v1::CpuAccess cpu);
  absl::StatusOr<v1::Grant> ShareWithUid(const Frame& frame, uid_t peer_uid,
                                         v1::CpuAccess cpu);

 protected:
  explicit Camera(Client& client) : client_(&client) {}
  // Allocates options.buffer_count buffers for `desc`'s image.
  absl::Status AllocateBuffers(const v1::BufferDescriptor& desc, uint32_t count);

  Client* client_;
  StreamFormat format_;
  std::vector<Buffer> buffers_;  // set before streaming, then read-only
};

// OK, or INVALID_ARGUMENT for a zero width or height, a buffer count
// outside 1..kMaxBuffers, or a frame rate that is neither 0 nor a number
// in kMinFps..kMaxFps (both sources check this first).
absl::Status CheckOptions(const CameraOptions& options);
inline constexpr double kMinFps = 0.001;  // V4L2's interval is in ms
inline constexpr double kMaxFps = 1000;

// hallocd's layout for a frame of `desc` (an image descriptor), checked
// before the driver or the pattern writes by it: DATA_LOSS unless it has a
// plane, is the format and size asked for, fits in `buffer_size` bytes,
// and has every plane within its own size.
absl::Status CheckFrameLayout(const v1::BufferLayout& layout, const v1::BufferDescriptor& desc,
                              uint64_t buffer_size = UINT64_MAX);

// Whether a V4L2 driver that negotiated `driver` (its format, bytesperline
// and sizeimage; one memory plane) writes each frame where hallocd's
// `layout` says consumers read it: every plane at the driver's stride, the
// format's number of planes, the first at byte 0 (a driver writes from the
// start of the buffer; a multi-planar driver's data_offset is refused as
// each frame comes), the second right after the first's rows, and the
// whole frame within the layout. FAILED_PRECONDITION naming both sides
// (`device` says where) when not.
absl::Status ReconcileWithDriver(const StreamFormat& driver, const v1::BufferLayout& layout,
                                 absl::string_view device);

// The bytes a driver that negotiated `driver` writes for a whole frame:
// each colour plane's rows (the format's, ceil(height / its vertical
// subsampling)) at bytesperline, in the one memory plane. A frame that
// ends before (bytesused) was cut short. sizeimage may be larger (a
// driver's padding); 0 for a format not in the camera's table.
uint64_t FrameBytes(const StreamFormat& driver);

// The length a V4L2 buffer of `size` bytes is queued with: its size, or
// UINT32_MAX past that. v4l2_buffer's and v4l2_plane's lengths are 32
// bits, and so is a frame (sizeimage), so a buffer's first 4 GiB always
// hold the frame. (A plain cast kept the size modulo 2^32: a buffer of
// 4 GiB + 4 KiB said 4 KiB, which the driver refuses as too small.)
uint32_t V4l2Length(uint64_t size);

// The descriptor a camera asks hallocd for: an image of `options.format`,
// width x height, usage camera_output | options.usage | extra_usage.
v1::BufferDescriptor FrameDescriptor(const CameraOptions& options,
                                     uint32_t width, uint32_t height,
                                     uint64_t extra_usage = 0);

}  // namespace halloc::camera

#endif  // HALLOC_CLIENTS_CAMERA_CAMERA_H_
