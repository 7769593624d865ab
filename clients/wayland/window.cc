#include "clients/wayland/window.h"

#include <errno.h>

#include <climits>
#include <string>

#include "xdg-shell-client-protocol.h"

namespace halloc::wayland {

struct WindowListeners {
  static void Configure(void* data, xdg_surface* surface, uint32_t serial) {
    xdg_surface_ack_configure(surface, serial);
    static_cast<Window*>(data)->configured_ = true;
  }
  static void ToplevelConfigure(void* data, xdg_toplevel*, int32_t width,
                                int32_t height, wl_array*) {
    auto* w = static_cast<Window*>(data);
    w->width_ = width;
    w->height_ = height;
  }
  static void ToplevelClose(void* data, xdg_toplevel*) {
    static_cast<Window*>(data)->close_requested_ = true;
  }
  static void FrameDone(void* data, wl_callback* cb, uint32_t) {
    auto* w = static_cast<Window*>(data);
    if (w->frame_ == cb) w->frame_ = nullptr;
    wl_callback_destroy(cb);
  }
};

namespace {

const xdg_surface_listener kSurfaceListener = {
    .configure = WindowListeners::Configure,
};
const xdg_toplevel_listener kToplevelListener = {
    .configure = WindowListeners::ToplevelConfigure,
    .close = WindowListeners::ToplevelClose,
    // Versions 4 and 5 only (xdg_wm_base is bound at version 1).
    .configure_bounds = [](void*, xdg_toplevel*, int32_t, int32_t) {},
    .wm_capabilities = [](void*, xdg_toplevel*, wl_array*) {},
};
const wl_callback_listener kFrameListener = {
    .done = WindowListeners::FrameDone,
};

}  // namespace

absl::StatusOr<std::unique_ptr<Window>> Window::Create(
    Display& display, const WindowOptions& options) {
  if (!display.compositor()) {
    return absl::FailedPreconditionError(
        "the compositor offers no wl_compositor");
  }
  if (!display.wm_base()) {
    return absl::FailedPreconditionError(
        "the compositor offers no xdg_wm_base (xdg-shell): it cannot show "
        "toplevel windows");
  }
  std::unique_ptr<Window> w(new Window(display));
  w->surface_ = wl_compositor_create_surface(display.compositor());
  w->xdg_surface_ = xdg_wm_base_get_xdg_surface(display.wm_base(), w->surface_);
  xdg_surface_add_listener(w->xdg_surface_, &kSurfaceListener, w.get());
  w->toplevel_ = xdg_surface_get_toplevel(w->xdg_surface_);
  xdg_toplevel_add_listener(w->toplevel_, &kToplevelListener, w.get());
  xdg_toplevel_set_title(w->toplevel_, options.title.c_str());
  xdg_toplevel_set_app_id(w->toplevel_, "halloc");
  if (options.fullscreen) xdg_toplevel_set_fullscreen(w->toplevel_, nullptr);
  // The initial commit, without a buffer, asks for the first configure.
  wl_surface_commit(w->surface_);
  Window* raw = w.get();
  absl::Status s = display.DispatchUntil([raw] { return raw->configured_; },
                                         options.timeout,
                                         "xdg_surface.configure");
  if (!s.ok()) return s;
  return w;
}

Window::~Window() {
  if (frame_) wl_callback_destroy(frame_);
  if (toplevel_) xdg_toplevel_destroy(toplevel_);
  if (xdg_surface_) xdg_surface_destroy(xdg_surface_);
  if (surface_) wl_surface_destroy(surface_);
  // Let the compositor see the window go before the caller moves on.
  (void)wl_display_flush(display_.display());
}

absl::Status Window::Present(WlBuffer& buffer) {
  absl::Status s = display_.ConnectionError();
  if (!s.ok()) return s;
  wl_surface_attach(surface_, buffer.get(), 0, 0);
  if (wl_proxy_get_version(reinterpret_cast<wl_proxy*>(surface_)) >= 4) {
    wl_surface_damage_buffer(surface_, 0, 0, INT32_MAX, INT32_MAX);
  } else {
    wl_surface_damage(surface_, 0, 0, INT32_MAX, INT32_MAX);
  }
  if (frame_) wl_callback_destroy(frame_);
  frame_ = wl_surface_frame(surface_);
  wl_callback_add_listener(frame_, &kFrameListener, this);
  wl_surface_commit(surface_);
  if (wl_display_flush(display_.display()) < 0 && errno != EAGAIN) {
    return display_.FlushError(errno);
  }
  buffer.MarkBusy();  // queued (a full socket takes it later)
  return absl::OkStatus();
}

absl::Status Window::WaitForFrame(absl::Duration timeout) {
  return display_.DispatchUntil([this] { return frame_ == nullptr; }, timeout,
                                "wl_surface.frame");
}

}  // namespace halloc::wayland
