// The synthetic source: pattern.h's picture drawn by the CPU into hallocd
// buffers, paced at options.fps.
#include <time.h>

#include <algorithm>
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
#include "clients/camera/pattern.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"

namespace halloc::camera {
namespace {

absl::Duration Monotonic() {
  timespec ts = {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return absl::DurationFromTimespec(ts);
}

class SyntheticCamera : public Camera {
 public:
  SyntheticCamera(Client& client, double fps)
      : Camera(client),
        period_(fps > 0 ? absl::Seconds(1.0 / fps) : absl::ZeroDuration()) {}

  absl::Status Init(const CameraOptions& options) {
    RETURN_IF_ERROR(AllocateBuffers(
        FrameDescriptor(options, options.width, options.height,
                        usage::kCpuWriteOften),
        options.buffer_count));
    const v1::BufferLayout& layout = buffers_[0].layout();
    format_.drm_format = layout.format();
    format_.width = layout.width();
    format_.height = layout.height();
    format_.bytesperline = static_cast<uint32_t>(layout.planes(0).stride());
    format_.sizeimage = static_cast<uint32_t>(layout.size());
    format_.fps = options.fps;
    absl::MutexLock lock(&mu_);
    held_.assign(buffers_.size(), false);
    return absl::OkStatus();
  }

  std::string Describe() const override { return "synthetic"; }

  absl::Status Start() override {
    absl::MutexLock lock(&mu_);
    streaming_ = true;
    start_monotonic_ = Monotonic();
    started_sequence_ = sequence_;
    return absl::OkStatus();
  }

  absl::Status Stop() override {
    absl::MutexLock lock(&mu_);
    streaming_ = false;
    return absl::OkStatus();
  }

  absl::StatusOr<Frame> Next(absl::Duration timeout) override {
    Frame frame;
    absl::Duration due;
    absl::Duration wait;
    {
      absl::MutexLock lock(&mu_);
      if (!streaming_) return absl::FailedPreconditionError("not streaming: Start first");
      const uint32_t n = static_cast<uint32_t>(held_.size());
      uint32_t i = 0;
      while (i < n && held_[(next_ + i) % n]) ++i;
      if (i == n) {
        return absl::FailedPreconditionError(absl::StrCat(
            "all ", n, " buffers are held by the caller: Requeue one"));
      }
      const absl::Duration offset = period_ * static_cast<int64_t>(sequence_ - started_sequence_);
      // Paced on CLOCK_MONOTONIC, as its stamps are: a step of the wall
      // clock (NTP, settimeofday) neither stalls nor bursts the frames.
      due = start_monotonic_ + offset;
      wait = due - Monotonic();
      // Not due within the timeout: nothing is taken (the frame keeps its
      // slot and its sequence for a later call, as a V4L2 camera's next
      // frame does when a DQBUF poll times out).
      if (wait <= timeout) {
        frame.index = (next_ + i) % n;
        next_ = (frame.index + 1) % n;
        held_[frame.index] = true;
        frame.sequence = sequence_++;
      }
    }
    if (wait > timeout) {
      absl::SleepFor(timeout);  // waited as long as asked, as a poll would
      return absl::DeadlineExceededError(absl::StrFormat(
          "the next synthetic frame is due in %s", absl::FormatDuration(wait)));
    }
    absl::SleepFor(wait);
    const Buffer& buffer = buffers_[frame.index];
    absl::Status drawn = DrawInto(buffer, frame.sequence);
    if (!drawn.ok()) {
      GiveBack(frame.index);
      return drawn;
    }
    // Paced: the frame's slot on the schedule (a sensor's capture instant,
    // not when drawing ended), so timestamps are exactly a period apart.
    frame.timestamp = period_ > absl::ZeroDuration() ? due : Monotonic();
    frame.bytesused = format_.sizeimage;
    frame.buffer = &buffer;
    return frame;
  }

  absl::Status Requeue(uint32_t index) override {
    absl::MutexLock lock(&mu_);
    if (index >= held_.size() || !held_[index]) {
      return absl::FailedPreconditionError(
          absl::StrCat("frame ", index, " is not held by the caller"));
    }
    held_[index] = false;
    return absl::OkStatus();
  }

 private:
  void GiveBack(uint32_t index) {
    absl::MutexLock lock(&mu_);
    held_[index] = false;
  }

  static absl::Status DrawInto(const Buffer& buffer, uint32_t sequence) {
    ASSIGN_OR_RETURN(Mapping map, buffer.Map(Access::kReadWrite));
    return Draw(buffer.layout(), map.as<uint8_t>(), map.size(), sequence);
  }

  const absl::Duration period_;
  absl::Mutex mu_;
  bool streaming_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<bool> held_ ABSL_GUARDED_BY(mu_);  // given to the caller
  uint32_t next_ ABSL_GUARDED_BY(mu_) = 0;       // where to look first
  uint32_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t started_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration start_monotonic_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Camera>> Camera::OpenSynthetic(
    Client& client, const CameraOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  if (!CanDraw(options.format)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "format ", FourccString(options.format),
        ": the synthetic source draws XRGB8888, ARGB8888, YUYV and NV12"));
  }
  auto camera = std::make_unique<SyntheticCamera>(client, options.fps);
  RETURN_IF_ERROR(camera->Init(options));
  return std::unique_ptr<Camera>(std::move(camera));
}

}  // namespace halloc::camera
