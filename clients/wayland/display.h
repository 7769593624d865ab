// A connection to a Wayland compositor and the globals halloc's Wayland
// integration uses: wl_compositor, wl_shm (with its formats), xdg_wm_base,
// and zwp_linux_dmabuf_v1 (with its format+modifier pairs) when offered.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Display> display, Display::Connect());
//   ASSIGN_OR_RETURN(WlBuffer wl, WlBuffer::Create(*display, frame));
//
// Not thread-safe: one thread owns a Display and everything made from it.
//
// Status codes (what the caller does next): UNAVAILABLE — no compositor at
// that socket (start one, or name another); FAILED_PRECONDITION — the
// compositor lacks a global or a format this needs (use another path or
// compositor); DEADLINE_EXCEEDED — the compositor did not answer in time;
// INTERNAL — the connection died, with the compositor's protocol error.
#ifndef HALLOC_CLIENTS_WAYLAND_DISPLAY_H_
#define HALLOC_CLIENTS_WAYLAND_DISPLAY_H_

#include <drm_fourcc.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct wl_display;
struct wl_registry;
struct wl_compositor;
struct wl_shm;
struct xdg_wm_base;
struct zwp_linux_dmabuf_v1;

namespace halloc::wayland {

class Display {
 public:
  // Connects to `name`: a socket name under $XDG_RUNTIME_DIR or an absolute
  // path; empty means $WAYLAND_DISPLAY (else "wayland-0"). Waits up to
  // `timeout` for the compositor to list its globals.
  static absl::StatusOr<std::unique_ptr<Display>> Connect(
      absl::string_view name = "", absl::Duration timeout = absl::Seconds(5));
  ~Display();
  Display(const Display&) = delete;
  Display& operator=(const Display&) = delete;

  wl_display* display() const { return display_; }
  wl_compositor* compositor() const { return compositor_; }
  wl_shm* shm() const { return shm_; }
  xdg_wm_base* wm_base() const { return wm_base_; }
  // Null when the compositor does not offer linux-dmabuf.
  zwp_linux_dmabuf_v1* dmabuf() const { return dmabuf_; }

  // Whether wl_shm takes `wl_shm_format` (a wl_shm_format value).
  bool ShmSupports(uint32_t wl_shm_format) const {
    return shm_formats_.count(wl_shm_format) > 0;
  }
  // Whether linux-dmabuf takes DRM `fourcc` with `modifier`.
  bool DmabufSupports(uint32_t fourcc, uint64_t modifier) const {
    return dmabuf_formats_.count({fourcc, modifier}) > 0;
  }
  // The modifier to send linux-dmabuf for a buffer of `fourcc` laid out
  // with `modifier`: that one when offered; DRM_FORMAT_MOD_INVALID for a
  // LINEAR buffer when the compositor offers the format only with implicit
  // modifiers (one without modifier support: a linear buffer is what it
  // takes); nullopt when it cannot take the buffer.
  std::optional<uint64_t> DmabufModifierFor(uint32_t fourcc, uint64_t modifier) const {
    if (DmabufSupports(fourcc, modifier)) return modifier;
    if (modifier == DRM_FORMAT_MOD_LINEAR && DmabufSupports(fourcc, DRM_FORMAT_MOD_INVALID)) {
      return DRM_FORMAT_MOD_INVALID;
    }
    return std::nullopt;
  }

  // Flushes requests and dispatches events until `done()` holds, the
  // connection fails, or `timeout` passes. `what` names the wait in errors.
  template <typename Pred>
  absl::Status DispatchUntil(Pred done, absl::Duration timeout,
                             absl::string_view what);
  // One round trip: every request so far has been handled.
  absl::Status Roundtrip(absl::Duration timeout = absl::Seconds(5));
  // The connection's error as a status (OK while it is healthy).
  absl::Status ConnectionError() const;
  // Why flushing requests failed with `err` (not EAGAIN): on EPIPE the
  // compositor closed its end, and what it sent before (a protocol error
  // saying why) is read first.
  absl::Status FlushError(int err);

 private:
  Display() = default;
  // Dispatches what arrives within `timeout` (at most one wait).
  absl::Status DispatchOnce(absl::Duration timeout);

  static void OnGlobal(void* data, wl_registry* registry, uint32_t name,
                       const char* interface, uint32_t version);
  static void OnGlobalRemove(void* data, wl_registry* registry, uint32_t name);

  wl_display* display_ = nullptr;
  wl_registry* registry_ = nullptr;
  wl_compositor* compositor_ = nullptr;
  wl_shm* shm_ = nullptr;
  xdg_wm_base* wm_base_ = nullptr;
  zwp_linux_dmabuf_v1* dmabuf_ = nullptr;
  std::set<uint32_t> shm_formats_;
  std::set<std::pair<uint32_t, uint64_t>> dmabuf_formats_;

  friend struct DisplayListeners;
};

template <typename Pred>
absl::Status Display::DispatchUntil(Pred done, absl::Duration timeout,
                                    absl::string_view what) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("compositor did not answer in ",
                       absl::FormatDuration(timeout), ": ", what));
    }
    absl::Status s = DispatchOnce(left);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_DISPLAY_H_
