// The V4L2 source: a capture node streaming into hallocd's dma-bufs with
// V4L2_MEMORY_DMABUF (single-planar API, or the multi-planar API with one
// memory plane).
#include <drm_fourcc.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/camera/camera.h"
#include "clients/camera/formats.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::camera {
namespace {

// ioctl, retried on EINTR only (EAGAIN from DQBUF means "no frame yet").
int Xioctl(int fd, unsigned long request, void* arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

absl::Status IoctlError(absl::string_view what, const std::string& device) {
  return ErrnoStatus(errno, absl::StrCat(what, " on ", device));
}

std::string CString(const uint8_t* s, size_t n) {
  const char* c = reinterpret_cast<const char*>(s);
  return std::string(c, strnlen(c, n));
}

// One buffer's place: ours, the driver's or the caller's.
enum class Slot { kIdle, kQueued, kHeld };

class V4l2Camera : public Camera {
 public:
  V4l2Camera(Client& client, UniqueFd fd, std::string device, uint32_t type)
      : Camera(client), fd_(std::move(fd)), device_(std::move(device)), type_(type) {}

  ~V4l2Camera() override {
    Stop().IgnoreError();
    v4l2_requestbuffers req = {};
    req.type = type_;
    req.memory = V4L2_MEMORY_DMABUF;
    Xioctl(fd_.get(), VIDIOC_REQBUFS, &req);  // nothing to do if it fails
  }

  absl::Status Init(const CameraOptions& options) {
    v4l2_capability cap = {};
    if (Xioctl(fd_.get(), VIDIOC_QUERYCAP, &cap) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          device_, " is not a V4L2 device (VIDIOC_QUERYCAP: ", strerror(errno), ")"));
    }
    driver_ = CString(cap.driver, sizeof(cap.driver));
    const uint32_t caps = (cap.capabilities & V4L2_CAP_DEVICE_CAPS)
                              ? cap.device_caps
                              : cap.capabilities;
    if (caps & V4L2_CAP_VIDEO_CAPTURE) {
      type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE;
    } else if (caps & V4L2_CAP_VIDEO_CAPTURE_MPLANE) {
      type_ = V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          device_, " (", driver_, ") is not a video capture device"));
    }
    if (!(caps & V4L2_CAP_STREAMING)) {
      return absl::InvalidArgumentError(
          absl::StrCat(device_, " (", driver_, ") cannot stream"));
    }
    ASSIGN_OR_RETURN(const uint32_t pixfmt, V4l2FromDrm(options.format));
    RETURN_IF_ERROR(CheckOffered(pixfmt));
    RETURN_IF_ERROR(Negotiate(options, pixfmt));
    SetFrameRate(options.fps);
    RETURN_IF_ERROR(RequestBuffers(options));
    absl::MutexLock lock(&mu_);
    slots_.assign(buffers_.size(), Slot::kIdle);
    return absl::OkStatus();
  }

  std::string Describe() const override {
    return absl::StrCat(driver_, " (", device_, ")");
  }

  absl::Status Start() override {
    absl::MutexLock lock(&mu_);
    if (streaming_) return absl::OkStatus();
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i] == Slot::kIdle) RETURN_IF_ERROR(QueueLocked(i));
    }
    int type = static_cast<int>(type_);
    if (Xioctl(fd_.get(), VIDIOC_STREAMON, &type) != 0) {
      return IoctlError("VIDIOC_STREAMON", device_);
    }
    streaming_ = true;
    return absl::OkStatus();
  }

  absl::Status Stop() override {
    absl::MutexLock lock(&mu_);
    if (!streaming_) return absl::OkStatus();
    int type = static_cast<int>(type_);
    if (Xioctl(fd_.get(), VIDIOC_STREAMOFF, &type) != 0) {
      return IoctlError("VIDIOC_STREAMOFF", device_);
    }
    streaming_ = false;
    for (Slot& s : slots_) {
      if (s == Slot::kQueued) s = Slot::kIdle;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Frame> Next(absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (!streaming_) return absl::FailedPreconditionError("not streaming: Start first");
        // A buffer passed over whose requeue failed (DequeueLocked) is
        // idle while streaming: back to the driver first, not lost from
        // the rotation until a Stop and Start. One that fails again waits
        // for the next call; the others still stream.
        absl::Status requeued;
        for (uint32_t i = 0; i < slots_.size(); ++i) {
          if (slots_[i] == Slot::kIdle) requeued.Update(QueueLocked(i));
        }
        bool any_queued = false;
        for (Slot s : slots_) any_queued |= s == Slot::kQueued;
        if (!any_queued) {
          RETURN_IF_ERROR(requeued);
          return absl::FailedPreconditionError(absl::StrCat(
              "all ", slots_.size(), " buffers are held by the caller: Requeue one"));
        }
        absl::StatusOr<Frame> frame = DequeueLocked();
        if (!frame.ok() || frame->buffer != nullptr) return frame;
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(absl::StrCat(
            "no frame from ", Describe(), " in ", absl::FormatDuration(timeout)));
      }
      pollfd p = {fd_.get(), POLLIN, 0};
      // At most a second a wait (the deadline is looked at again): an
      // infinite timeout's milliseconds would not fit an int (cut to -1,
      // plus one: 0, a poll that returns at once, in a loop).
      const int ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(left), int64_t{1000}) + 1);
      if (poll(&p, 1, ms) < 0 && errno != EINTR) {
        return ErrnoStatus(errno, absl::StrCat("poll ", device_));
      }
    }
  }

  uint64_t skipped_error_frames() const override {
    absl::MutexLock lock(&mu_);
    return skipped_error_frames_;
  }

  absl::Status Requeue(uint32_t index) override {
    absl::MutexLock lock(&mu_);
    if (index >= slots_.size() || slots_[index] != Slot::kHeld) {
      return absl::FailedPreconditionError(
          absl::StrCat("frame ", index, " is not held by the caller"));
    }
    if (!streaming_) {
      slots_[index] = Slot::kIdle;
      return absl::OkStatus();
    }
    return QueueLocked(index);
  }

 private:
  bool mplane() const { return type_ == V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE; }

  absl::Status CheckOffered(uint32_t pixfmt) {
    std::string offered;
    // Bounded: a driver that never ends the list must not loop for ever.
    constexpr uint32_t kMostFormats = 1024;
    for (uint32_t i = 0; i < kMostFormats; ++i) {
      v4l2_fmtdesc desc = {};
      desc.index = i;
      desc.type = type_;
      if (Xioctl(fd_.get(), VIDIOC_ENUM_FMT, &desc) != 0) break;
      if (desc.pixelformat == pixfmt) return absl::OkStatus();
      absl::StrAppend(&offered, offered.empty() ? "" : ", ",
                      FourccString(desc.pixelformat));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(), " does not offer ", FourccString(pixfmt),
                     "; it offers: ", offered.empty() ? "nothing" : offered));
  }

  // S_FMT with hallocd's stride for `width`x`height`; what the driver set.
  absl::StatusOr<struct v4l2_format> SetFormat(uint32_t pixfmt, uint32_t width,
                                        uint32_t height, uint32_t stride) {
    struct v4l2_format fmt = {};
    fmt.type = type_;
    if (mplane()) {
      fmt.fmt.pix_mp.width = width;
      fmt.fmt.pix_mp.height = height;
      fmt.fmt.pix_mp.pixelformat = pixfmt;
      fmt.fmt.pix_mp.field = V4L2_FIELD_NONE;
      fmt.fmt.pix_mp.num_planes = 1;
      fmt.fmt.pix_mp.plane_fmt[0].bytesperline = stride;
    } else {
      fmt.fmt.pix.width = width;
      fmt.fmt.pix.height = height;
      fmt.fmt.pix.pixelformat = pixfmt;
      fmt.fmt.pix.field = V4L2_FIELD_NONE;
      fmt.fmt.pix.bytesperline = stride;
    }
    if (Xioctl(fd_.get(), VIDIOC_S_FMT, &fmt) != 0) {
      return IoctlError("VIDIOC_S_FMT", device_);
    }
    return fmt;
  }

  // hallocd's layout for the format at `width`x`height`.
  absl::StatusOr<v1::BufferLayout> HallocLayout(const CameraOptions& options,
                                                uint32_t width, uint32_t height) {
    const v1::BufferDescriptor desc = FrameDescriptor(options, width, height);
    ASSIGN_OR_RETURN(v1::IsSupportedResponse r, client_->IsSupported(desc, options.buffer_count));
    RETURN_IF_ERROR(SupportStatus(r));
    RETURN_IF_ERROR(CheckFrameLayout(r.layout(), desc));
    return r.layout();
  }

  // Agrees on format, size and row pitch with the driver (format_).
  absl::Status Negotiate(const CameraOptions& options, uint32_t pixfmt) {
    uint32_t width = options.width, height = options.height;
    v1::BufferLayout layout;
    struct v4l2_format fmt = {};
    // The driver may change the size; then ask hallocd again (twice at most).
    for (int round = 0; round < 2; ++round) {
      ASSIGN_OR_RETURN(layout, HallocLayout(options, width, height));
      ASSIGN_OR_RETURN(fmt, SetFormat(pixfmt, width, height,
                                      static_cast<uint32_t>(layout.planes(0).stride())));
      const uint32_t got_w = mplane() ? fmt.fmt.pix_mp.width : fmt.fmt.pix.width;
      const uint32_t got_h = mplane() ? fmt.fmt.pix_mp.height : fmt.fmt.pix.height;
      if (got_w == width && got_h == height) break;
      width = got_w;
      height = got_h;
    }
    const uint32_t got_format =
        mplane() ? fmt.fmt.pix_mp.pixelformat : fmt.fmt.pix.pixelformat;
    if (got_format != pixfmt) {
      return absl::FailedPreconditionError(absl::StrCat(
          Describe(), " refused ", FourccString(pixfmt), " (it set ",
          FourccString(got_format), ")"));
    }
    if (mplane() && fmt.fmt.pix_mp.num_planes != 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          Describe(), " wants ", fmt.fmt.pix_mp.num_planes, " memory planes for ",
          FourccString(pixfmt), "; only one-buffer formats are supported"));
    }
    // A buffer holding one field (ALTERNATE, TOP, BOTTOM: half the rows)
    // or two fields one after the other (SEQ_TB, SEQ_BT) is not a frame
    // as the layout and every consumer read one. Woven fields
    // (INTERLACED*) are laid out as a frame is; ANY (which S_FMT should
    // never give back) is taken as progressive.
    const uint32_t field = mplane() ? fmt.fmt.pix_mp.field : fmt.fmt.pix.field;
    if (field == V4L2_FIELD_ALTERNATE || field == V4L2_FIELD_TOP || field == V4L2_FIELD_BOTTOM ||
        field == V4L2_FIELD_SEQ_TB || field == V4L2_FIELD_SEQ_BT) {
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(), " gives fields, not frames, in its buffers (field order ", field,
                       "); only progressive or woven interlaced frames are supported"));
    }
    format_.drm_format = options.format;
    format_.v4l2_format = pixfmt;
    format_.multiplanar_api = mplane();
    format_.width = mplane() ? fmt.fmt.pix_mp.width : fmt.fmt.pix.width;
    format_.height = mplane() ? fmt.fmt.pix_mp.height : fmt.fmt.pix.height;
    format_.bytesperline = mplane() ? fmt.fmt.pix_mp.plane_fmt[0].bytesperline
                                    : fmt.fmt.pix.bytesperline;
    format_.sizeimage = mplane() ? fmt.fmt.pix_mp.plane_fmt[0].sizeimage
                                 : fmt.fmt.pix.sizeimage;
    if (format_.width != layout.width() || format_.height != layout.height()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s keeps changing the frame size (asked %ux%u, got %ux%u)", Describe(),
          layout.width(), layout.height(), format_.width, format_.height));
    }
    return ReconcileWithDriver(format_, layout, Describe());
  }

  // Asks for `fps` where the driver can set its frame interval; records
  // what it runs at. Best effort: a driver without it keeps its own rate.
  void SetFrameRate(double fps) {
    v4l2_streamparm parm = {};
    parm.type = type_;
    if (Xioctl(fd_.get(), VIDIOC_G_PARM, &parm) != 0) return;
    v4l2_fract* tpf = &parm.parm.capture.timeperframe;
    if (fps > 0 && (parm.parm.capture.capability & V4L2_CAP_TIMEPERFRAME)) {
      const v4l2_fract running = *tpf;
      tpf->numerator = 1000;
      tpf->denominator = static_cast<uint32_t>(fps * 1000);
      // Refused: the driver keeps the rate G_PARM said it runs at.
      if (Xioctl(fd_.get(), VIDIOC_S_PARM, &parm) != 0) *tpf = running;
    }
    if (tpf->numerator != 0 && tpf->denominator != 0) {
      format_.fps = static_cast<double>(tpf->denominator) / tpf->numerator;
    }
  }

  absl::Status RequestBuffers(const CameraOptions& options) {
    v4l2_requestbuffers req = {};
    req.count = options.buffer_count;
    req.type = type_;
    req.memory = V4L2_MEMORY_DMABUF;
    if (Xioctl(fd_.get(), VIDIOC_REQBUFS, &req) != 0) {
      if (errno == EINVAL) {
        return absl::FailedPreconditionError(
            absl::StrCat(Describe(), " does not take V4L2_MEMORY_DMABUF buffers"));
      }
      return IoctlError("VIDIOC_REQBUFS", device_);
    }
    if (req.count == 0 || req.count > kMaxBuffers) {
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(), " offers ", req.count, " buffers"));
    }
    RETURN_IF_ERROR(AllocateBuffers(
        FrameDescriptor(options, format_.width, format_.height), req.count));
    // Laid out as IsSupported said for options.buffer_count, which the
    // driver may have raised (AllocateBuffers: all alike), and dma-bufs.
    RETURN_IF_ERROR(ReconcileWithDriver(format_, buffers_[0].layout(), Describe()));
    for (const Buffer& b : buffers_) {
      if (!b.is_dmabuf()) {
        return absl::FailedPreconditionError(
            absl::StrCat("hallocd's ", b.info().backend(),
                         " backend gives no dma-bufs, which V4L2 needs; use the synthetic source"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status QueueLocked(uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v4l2_buffer b = {};
    v4l2_plane plane = {};
    b.index = index;
    b.type = type_;
    b.memory = V4L2_MEMORY_DMABUF;
    const uint32_t length = V4l2Length(buffers_[index].size());
    if (mplane()) {
      plane.m.fd = buffers_[index].fd();
      plane.length = length;
      b.m.planes = &plane;
      b.length = 1;
    } else {
      b.m.fd = buffers_[index].fd();
      b.length = length;
    }
    if (Xioctl(fd_.get(), VIDIOC_QBUF, &b) != 0) {
      return IoctlError(absl::StrCat("VIDIOC_QBUF ", index), device_);
    }
    slots_[index] = Slot::kQueued;
    return absl::OkStatus();
  }

  // A frame, or one with buffer == nullptr when none is ready (EAGAIN) or
  // the one that came was flagged corrupt (requeued at once).
  absl::StatusOr<Frame> DequeueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v4l2_buffer b = {};
    v4l2_plane plane = {};
    b.type = type_;
    b.memory = V4L2_MEMORY_DMABUF;
    if (mplane()) {
      b.m.planes = &plane;
      b.length = 1;
    }
    Frame frame;
    if (Xioctl(fd_.get(), VIDIOC_DQBUF, &b) != 0) {
      if (errno == EAGAIN) return frame;
      return IoctlError("VIDIOC_DQBUF", device_);
    }
    if (b.index >= slots_.size()) {
      return absl::InternalError(absl::StrCat(
          Describe(), " returned buffer ", b.index, " of ", slots_.size()));
    }
    if (slots_[b.index] != Slot::kQueued) {
      // Held by a consumer or never queued: not the driver's to return
      // (videobuf2 never does). Left as it is, not handed out twice.
      return absl::InternalError(
          absl::StrCat(Describe(), " returned buffer ", b.index, ", which it did not have"));
    }
    if (mplane() && plane.data_offset != 0) {
      // The frame starts that far into the buffer, after a header of the
      // driver's: not where hallocd's layout (which consumers read by)
      // puts it. Refused, not handed out shifted.
      const uint32_t offset = plane.data_offset;
      slots_[b.index] = Slot::kIdle;
      RETURN_IF_ERROR(QueueLocked(b.index));
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(), " puts a ", offset,
                       "-byte header before each frame (data_offset), "
                       "which hallocd's layout does not describe"));
    }
    const uint32_t bytesused = mplane() ? plane.bytesused : b.bytesused;
    // The data may be corrupt (flagged), or end early (a transfer cut off:
    // the last rows are an older frame's, for these uncompressed formats;
    // short of the frame's data, not of sizeimage, which a driver may pad);
    // the buffer is fine: straight back to the driver, and nothing for the
    // caller yet (a display would drop what libcamera calls a FrameError
    // anyway).
    if ((b.flags & V4L2_BUF_FLAG_ERROR) || bytesused < FrameBytes(format_)) {
      ++skipped_error_frames_;
      slots_[b.index] = Slot::kIdle;
      RETURN_IF_ERROR(QueueLocked(b.index));
      return frame;
    }
    slots_[b.index] = Slot::kHeld;
    frame.index = b.index;
    frame.sequence = b.sequence;
    // CLOCK_MONOTONIC, as Frame promises: the driver's stamp when it says
    // it is one (capture drivers' rule), else the time it was dequeued
    // (a COPY or UNKNOWN stamp is on no clock a consumer can compare).
    if ((b.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK) == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC) {
      frame.timestamp = absl::DurationFromTimeval(b.timestamp);
    } else {
      timespec now = {};
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      frame.timestamp = absl::DurationFromTimespec(now);
    }
    frame.bytesused = bytesused;
    frame.buffer = &buffers_[b.index];
    return frame;
  }

  const UniqueFd fd_;
  const std::string device_;
  std::string driver_;
  uint32_t type_;
  mutable absl::Mutex mu_;
  bool streaming_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t skipped_error_frames_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Camera>> Camera::OpenV4l2(
    Client& client, const CameraOptions& options) {
  if (options.device.empty()) {
    return absl::InvalidArgumentError("no V4L2 device given");
  }
  RETURN_IF_ERROR(CheckOptions(options));
  RETURN_IF_ERROR(V4l2FromDrm(options.format).status());
  UniqueFd fd(open(options.device.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd.is_valid()) return ErrnoStatus(errno, absl::StrCat("open ", options.device));
  auto camera = std::make_unique<V4l2Camera>(client, std::move(fd), options.device,
                                             V4L2_BUF_TYPE_VIDEO_CAPTURE);
  RETURN_IF_ERROR(camera->Init(options));
  return std::unique_ptr<Camera>(std::move(camera));
}

}  // namespace halloc::camera
