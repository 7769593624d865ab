#include "clients/wayland/display.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "linux-dmabuf-unstable-v1-client-protocol.h"
#include "xdg-shell-client-protocol.h"

namespace halloc::wayland {

// The listeners, as a friend so that they may fill the Display's fields.
struct DisplayListeners {
  static void ShmFormat(void* data, wl_shm*, uint32_t format) {
    static_cast<Display*>(data)->shm_formats_.insert(format);
  }
  static void DmabufFormat(void*, zwp_linux_dmabuf_v1*, uint32_t) {
    // Deprecated (no modifier); version 3 also sends `modifier`.
  }
  static void DmabufModifier(void* data, zwp_linux_dmabuf_v1*, uint32_t format,
                             uint32_t hi, uint32_t lo) {
    static_cast<Display*>(data)->dmabuf_formats_.insert(
        {format, (static_cast<uint64_t>(hi) << 32) | lo});
  }
  static void Ping(void*, xdg_wm_base* wm_base, uint32_t serial) {
    xdg_wm_base_pong(wm_base, serial);
  }
};

namespace {

const wl_shm_listener kShmListener = {.format = DisplayListeners::ShmFormat};
const zwp_linux_dmabuf_v1_listener kDmabufListener = {
    .format = DisplayListeners::DmabufFormat,
    .modifier = DisplayListeners::DmabufModifier,
};
const xdg_wm_base_listener kWmBaseListener = {.ping = DisplayListeners::Ping};

}  // namespace

void Display::OnGlobal(void* data, wl_registry* registry, uint32_t name,
                       const char* interface, uint32_t version) {
  auto* self = static_cast<Display*>(data);
  const absl::string_view iface(interface);
  if (iface == wl_compositor_interface.name && !self->compositor_) {
    self->compositor_ = static_cast<wl_compositor*>(wl_registry_bind(
        registry, name, &wl_compositor_interface, std::min(version, 4u)));
  } else if (iface == wl_shm_interface.name && !self->shm_) {
    self->shm_ = static_cast<wl_shm*>(
        wl_registry_bind(registry, name, &wl_shm_interface, 1));
    wl_shm_add_listener(self->shm_, &kShmListener, self);
  } else if (iface == xdg_wm_base_interface.name && !self->wm_base_) {
    self->wm_base_ = static_cast<xdg_wm_base*>(
        wl_registry_bind(registry, name, &xdg_wm_base_interface, 1));
    xdg_wm_base_add_listener(self->wm_base_, &kWmBaseListener, self);
  } else if (iface == zwp_linux_dmabuf_v1_interface.name && !self->dmabuf_ &&
             version >= 3) {
    // Version 3: format+modifier pairs arrive as `modifier` events (4
    // replaces them with feedback objects, which this does not need).
    self->dmabuf_ = static_cast<zwp_linux_dmabuf_v1*>(
        wl_registry_bind(registry, name, &zwp_linux_dmabuf_v1_interface, 3));
    zwp_linux_dmabuf_v1_add_listener(self->dmabuf_, &kDmabufListener, self);
  }
}

void Display::OnGlobalRemove(void*, wl_registry*, uint32_t) {}

absl::StatusOr<std::unique_ptr<Display>> Display::Connect(
    absl::string_view name, absl::Duration timeout) {
  std::unique_ptr<Display> self(new Display());
  const std::string socket(name);
  self->display_ = wl_display_connect(socket.empty() ? nullptr : socket.c_str());
  if (!self->display_) {
    return absl::UnavailableError(absl::StrFormat(
        "cannot connect to the Wayland compositor at %s: %s",
        socket.empty() ? "$WAYLAND_DISPLAY" : socket, strerror(errno)));
  }
  self->registry_ = wl_display_get_registry(self->display_);
  static const wl_registry_listener listener = {
      .global = &Display::OnGlobal,
      .global_remove = &Display::OnGlobalRemove,
  };
  wl_registry_add_listener(self->registry_, &listener, self.get());
  // The first round trip lists the globals (and binds them), the second
  // delivers the events sent on bind: wl_shm formats, dmabuf modifiers.
  for (int i = 0; i < 2; ++i) {
    absl::Status s = self->Roundtrip(timeout);
    if (!s.ok()) return s;
  }
  return self;
}

Display::~Display() {
  if (dmabuf_) zwp_linux_dmabuf_v1_destroy(dmabuf_);
  if (wm_base_) xdg_wm_base_destroy(wm_base_);
  if (shm_) wl_shm_destroy(shm_);
  if (compositor_) wl_compositor_destroy(compositor_);
  if (registry_) wl_registry_destroy(registry_);
  if (display_) wl_display_disconnect(display_);
}

absl::Status Display::ConnectionError() const {
  const int err = wl_display_get_error(display_);
  if (err == 0) return absl::OkStatus();
  if (err == EPROTO) {
    const wl_interface* iface = nullptr;
    uint32_t id = 0;
    const uint32_t code = wl_display_get_protocol_error(display_, &iface, &id);
    return absl::InternalError(absl::StrFormat(
        "the compositor closed the connection: protocol error %u on %s@%u "
        "(its log says why)",
        code, iface ? iface->name : "?", id));
  }
  return absl::InternalError(absl::StrCat(
      "the Wayland connection failed: ", strerror(err)));
}

absl::Status Display::FlushError(int err) {
  if (err == EPIPE) RETURN_IF_ERROR(DispatchOnce(absl::Milliseconds(100)));
  absl::Status broken = ConnectionError();
  return broken.ok() ? ErrnoStatus(err, "flushing Wayland requests") : broken;
}

absl::Status Display::DispatchOnce(absl::Duration timeout) {
  while (wl_display_prepare_read(display_) != 0) {
    if (wl_display_dispatch_pending(display_) < 0) return ConnectionError();
  }
  // Send what is queued; EAGAIN means the socket is full, poll for it.
  // EPIPE: the compositor closed its end, and what it sent before (a
  // protocol error saying why) is still to be read below: libwayland leaves
  // the connection usable for that.
  short events = POLLIN;
  if (wl_display_flush(display_) < 0) {
    const int err = errno;
    if (err == EAGAIN) {
      events |= POLLOUT;
    } else if (err != EPIPE) {
      wl_display_cancel_read(display_);
      absl::Status broken = ConnectionError();
      return broken.ok() ? ErrnoStatus(err, "flushing Wayland requests") : broken;
    }
  }
  pollfd pfd = {.fd = wl_display_get_fd(display_), .events = events,
                .revents = 0};
  const int ms = static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(timeout) + 1, 0, 60000));
  const int n = poll(&pfd, 1, ms);
  if (n < 0 && errno != EINTR) {
    const int err = errno;
    wl_display_cancel_read(display_);
    return ErrnoStatus(err, "polling the Wayland socket");
  }
  if (n > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP))) {
    if (wl_display_read_events(display_) < 0) return ConnectionError();
  } else {
    wl_display_cancel_read(display_);
  }
  if (wl_display_dispatch_pending(display_) < 0) return ConnectionError();
  return absl::OkStatus();
}

absl::Status Display::Roundtrip(absl::Duration timeout) {
  bool done = false;
  wl_callback* cb = wl_display_sync(display_);
  static const wl_callback_listener listener = {
      .done = [](void* data, wl_callback*, uint32_t) {
        *static_cast<bool*>(data) = true;
      },
  };
  wl_callback_add_listener(cb, &listener, &done);
  absl::Status s =
      DispatchUntil([&] { return done; }, timeout, "wl_display.sync");
  wl_callback_destroy(cb);
  return s;
}

}  // namespace halloc::wayland
