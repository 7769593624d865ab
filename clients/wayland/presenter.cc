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
  std::vector<WlBuffer>& mine = buffers_[buffer.id()];
  if (mine.empty()) {
    absl::StatusOr<WlBuffer> wl = WlBuffer::Create(*display_, buffer, options_.path);
    if (!wl.ok()) {
      buffers_.erase(buffer.id());
      return wl.status();
    }
    mine.push_back(*std::move(wl));
  }
  absl::Status s = WaitShown();
  if (!s.ok()) return s;
  absl::StatusOr<WlBuffer*> wl = Writable(mine, buffer);
  if (!wl.ok()) return wl.status();
  s = (*wl)->Refresh(buffer);  // kShmCopy only
  if (!s.ok()) return s;
  last_path_ = (*wl)->path();
  return window_->Present(**wl);
}

absl::StatusOr<WlBuffer*> Presenter::Writable(std::vector<WlBuffer>& mine, const Buffer& buffer) {
  // Zero copy: the client's own pages, attached again as they are.
  if (mine.front().path() != BufferPath::kShmCopy) return &mine.front();
  auto released = [&]() -> WlBuffer* {
    for (WlBuffer& wl : mine) {
      if (!wl.busy()) return &wl;
    }
    return nullptr;
  };
  if (WlBuffer* wl = released()) return wl;
  if (mine.size() < kMaxCopies) {
    absl::StatusOr<WlBuffer> copy = WlBuffer::Create(*display_, buffer, BufferPath::kShmCopy);
    if (!copy.ok()) return copy.status();
    mine.push_back(*std::move(copy));
    return &mine.back();
  }
  absl::Status s = display_->DispatchUntil([&] { return released() != nullptr; },
                                           options_.frame_timeout, "wl_buffer.release");
  if (!s.ok()) return s;
  return released();
}

bool Presenter::busy(uint64_t buffer_id) const {
  auto it = buffers_.find(buffer_id);
  if (it == buffers_.end() || it->second.empty()) return false;
  const WlBuffer& own = it->second.front();
  return own.path() != BufferPath::kShmCopy && own.busy();  // copies are ours
}

absl::Status Presenter::WaitReleased(uint64_t buffer_id) {
  if (!busy(buffer_id)) return absl::OkStatus();
  return display_->DispatchUntil([&] { return !busy(buffer_id); }, options_.frame_timeout,
                                 "wl_buffer.release");
}

absl::Status Presenter::WaitShown() {
  if (!window_->frame_pending()) return absl::OkStatus();
  return window_->WaitForFrame(options_.frame_timeout);
}

}  // namespace halloc::wayland
