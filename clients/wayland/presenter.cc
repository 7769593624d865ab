#include "clients/wayland/presenter.h"

#include <utility>

namespace halloc::wayland {

absl::StatusOr<std::unique_ptr<Presenter>> Presenter::Create(
    const PresenterOptions& options) {
  std::unique_ptr<Presenter> p(new Presenter());
  p->options_ = options;
  absl::StatusOr<std::unique_ptr<Display>> display =
      Display::Connect(options.display);
  if (!display.ok()) return display.status();
  p->display_ = *std::move(display);
  absl::StatusOr<std::unique_ptr<Window>> window =
      Window::Create(*p->display_, options.window);
  if (!window.ok()) return window.status();
  p->window_ = *std::move(window);
  return p;
}

absl::Status Presenter::Show(const Buffer& buffer) {
  auto it = buffers_.find(buffer.id());
  if (it == buffers_.end()) {
    absl::StatusOr<WlBuffer> wl =
        WlBuffer::Create(*display_, buffer, options_.path);
    if (!wl.ok()) return wl.status();
    it = buffers_.emplace(buffer.id(), *std::move(wl)).first;
  }
  absl::Status s = WaitShown();
  if (!s.ok()) return s;
  s = it->second.Refresh(buffer);  // kShmCopy only
  if (!s.ok()) return s;
  last_path_ = it->second.path();
  return window_->Present(it->second);
}

absl::Status Presenter::WaitShown() {
  if (!window_->frame_pending()) return absl::OkStatus();
  return window_->WaitForFrame(options_.frame_timeout);
}

}  // namespace halloc::wayland
