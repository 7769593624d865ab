// Window: a minimal xdg_toplevel to show frames in, with frame callbacks.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Window> window,
//                    Window::Create(*display, {.title = "camera"}));
//   RETURN_IF_ERROR(window->Present(wl_buffer));  // attach, damage, commit
//   RETURN_IF_ERROR(window->WaitForFrame());      // the compositor drew it
//
// Not thread-safe (as Display). The Display must outlive the Window.
#ifndef HALLOC_CLIENTS_WAYLAND_WINDOW_H_
#define HALLOC_CLIENTS_WAYLAND_WINDOW_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/wayland/buffer.h"
#include "clients/wayland/display.h"

struct wl_surface;
struct wl_callback;
struct xdg_surface;
struct xdg_toplevel;

namespace halloc::wayland {

struct WindowOptions {
  std::string title = "halloc";
  // Ask for fullscreen on the compositor's choice of output.
  bool fullscreen = false;
  // The longest wait for the first configure.
  absl::Duration timeout = absl::Seconds(5);
};

class Window {
 public:
  // A toplevel, once the compositor has configured it. FAILED_PRECONDITION
  // if the compositor lacks wl_compositor or xdg_wm_base.
  static absl::StatusOr<std::unique_ptr<Window>> Create(
      Display& display, const WindowOptions& options = {});
  ~Window();
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;

  // The size the compositor asked for (0: the client's choice).
  int32_t configured_width() const { return width_; }
  int32_t configured_height() const { return height_; }
  // The compositor asked the window to close.
  bool close_requested() const { return close_requested_; }
  wl_surface* surface() const { return surface_; }

  // Attaches `buffer` at (0, 0), damages the whole surface, asks for a
  // frame callback and commits. The buffer is busy until released.
  absl::Status Present(WlBuffer& buffer);
  // Whether the frame callback of the last Present is still outstanding.
  bool frame_pending() const { return frame_ != nullptr; }
  // Waits for that callback: the compositor has drawn the frame and
  // wants the next one (its pace: the output's refresh).
  absl::Status WaitForFrame(absl::Duration timeout = absl::Seconds(2));

 private:
  explicit Window(Display& display) : display_(display) {}

  Display& display_;
  wl_surface* surface_ = nullptr;
  xdg_surface* xdg_surface_ = nullptr;
  xdg_toplevel* toplevel_ = nullptr;
  wl_callback* frame_ = nullptr;
  bool configured_ = false;
  bool close_requested_ = false;
  int32_t width_ = 0;
  int32_t height_ = 0;

  friend struct WindowListeners;
};

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_WINDOW_H_
