// Presenter: shows halloc buffers in a window of a Wayland compositor. The
// one call a tool needs to put frames on screen:
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Presenter> p, Presenter::Create({}));
//   for (const halloc::Buffer& frame : frames) {
//     RETURN_IF_ERROR(p->Show(frame));  // paced by the compositor
//   }
//
// Each buffer becomes a wl_buffer once (WlBuffer, keyed by the buffer's id)
// and is reused whenever it is shown again, so a ring of N frames costs N
// imports. A read-only memfd frame is copied at each Show (see buffer.h:
// wl_shm cannot map it); last_path() says so. A copy the compositor still
// holds (no wl_buffer.release yet: it may read it at its next repaint) is
// never written: the frame goes to another copy, up to kMaxCopies of one
// buffer, and past that Show waits for a release. Not thread-safe.
#ifndef HALLOC_CLIENTS_WAYLAND_PRESENTER_H_
#define HALLOC_CLIENTS_WAYLAND_PRESENTER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/client.h"
#include "clients/wayland/buffer.h"
#include "clients/wayland/display.h"
#include "clients/wayland/window.h"

namespace halloc::wayland {

struct PresenterOptions {
  // Socket name or absolute path; empty: $WAYLAND_DISPLAY.
  std::string display;
  WindowOptions window;
  BufferPath path = BufferPath::kAuto;
  // The longest wait for the compositor to take a frame.
  absl::Duration frame_timeout = absl::Seconds(2);
};

class Presenter {
 public:
  // Copies of one buffer at most (kShmCopy): the one on screen, one the
  // compositor has not let go of yet, and the one being written.
  static constexpr size_t kMaxCopies = 3;

  static absl::StatusOr<std::unique_ptr<Presenter>> Create(
      const PresenterOptions& options);

  // Waits until the compositor has drawn the previous frame (its frame
  // callback), then attaches and commits `buffer` (copied first on the
  // kShmCopy path). Returns once committed:
  // the frame is on screen after the next Show or WaitShown. On a zero-copy
  // path the compositor reads the caller's own pages until it releases
  // them: WaitReleased before writing the buffer again (before requeueing
  // it to a camera, say).
  absl::Status Show(const Buffer& buffer);
  // Waits for the frame callback of the last Show.
  absl::Status WaitShown();
  // Waits until the compositor holds none of the caller's pages of
  // `buffer_id` (wl_buffer.release of its zero-copy wl_buffer), for up to
  // frame_timeout: the caller may write them again. At once for a buffer
  // shown through copies, or never shown.
  absl::Status WaitReleased(uint64_t buffer_id);
  // Whether the compositor may still read the caller's pages of
  // `buffer_id` (a zero-copy wl_buffer not yet released).
  bool busy(uint64_t buffer_id) const;
  // Drops the wl_buffer of `buffer_id` (before releasing that buffer for
  // good, so the compositor lets go of its memory too).
  void Forget(uint64_t buffer_id) { buffers_.erase(buffer_id); }
  // The wl_buffers made for `buffer_id` so far (more than one: copies).
  size_t wl_buffers_of(uint64_t buffer_id) const {
    auto it = buffers_.find(buffer_id);
    return it == buffers_.end() ? 0 : it->second.size();
  }

  // How the last shown buffer reached the compositor.
  BufferPath last_path() const { return last_path_; }
  Display& display() { return *display_; }
  Window& window() { return *window_; }

 private:
  Presenter() = default;
  // The wl_buffer of `buffer` to write and attach now: its own, or a copy
  // the compositor is not holding (made, or waited for; see kMaxCopies).
  absl::StatusOr<WlBuffer*> Writable(std::vector<WlBuffer>& mine, const Buffer& buffer);

  PresenterOptions options_;
  std::unique_ptr<Display> display_;
  std::unique_ptr<Window> window_;  // before buffers_: destroyed after them
  // Per buffer id: its wl_buffer, or (kShmCopy) its copies.
  std::map<uint64_t, std::vector<WlBuffer>> buffers_;
  BufferPath last_path_ = BufferPath::kAuto;
};

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_PRESENTER_H_
