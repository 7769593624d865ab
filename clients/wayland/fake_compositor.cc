#include "clients/wayland/fake_compositor.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <thread>

#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "linux-dmabuf-unstable-v1-server-protocol.h"

namespace halloc::wayland::testing {

struct FakeCompositor::State {
  wl_display* display = nullptr;
  std::thread thread;
  std::vector<std::pair<uint32_t, uint64_t>> formats;
  uint32_t refuse_format = 0;
  absl::Duration answer_delay;
  mutable absl::Mutex mu;
  std::vector<DmabufRequest> requests ABSL_GUARDED_BY(mu);
  int live_buffers ABSL_GUARDED_BY(mu) = 0;
};

namespace {

using State = FakeCompositor::State;

// One zwp_linux_buffer_params_v1: the planes added so far.
struct Params {
  State* state;
  std::vector<DmabufPlane> planes;
};

void DestroyResource(wl_client*, wl_resource* r) { wl_resource_destroy(r); }

const struct wl_buffer_interface kBufferImpl = {.destroy = DestroyResource};

void ParamsAdd(wl_client*, wl_resource* r, int32_t fd, uint32_t plane,
               uint32_t offset, uint32_t stride, uint32_t hi, uint32_t lo) {
  UniqueFd owned(fd);
  struct stat st = {};
  fstat(fd, &st);
  static_cast<Params*>(wl_resource_get_user_data(r))
      ->planes.push_back({plane, offset, stride,
                          (static_cast<uint64_t>(hi) << 32) | lo, st.st_ino});
}

void ParamsCreate(wl_client* client, wl_resource* r, int32_t width,
                  int32_t height, uint32_t format, uint32_t) {
  auto* p = static_cast<Params*>(wl_resource_get_user_data(r));
  State* state = p->state;
  absl::SleepFor(state->answer_delay);
  DmabufRequest req{width, height, format, p->planes, false};
  if (format == state->refuse_format) {
    zwp_linux_buffer_params_v1_send_failed(r);
  } else {
    wl_resource* buffer = wl_resource_create(client, &wl_buffer_interface, 1, 0);
    wl_resource_set_implementation(buffer, &kBufferImpl, state, [](wl_resource* res) {
      auto* st = static_cast<State*>(wl_resource_get_user_data(res));
      absl::MutexLock lock(&st->mu);
      --st->live_buffers;
    });
    zwp_linux_buffer_params_v1_send_created(r, buffer);
    req.created = true;
  }
  absl::MutexLock lock(&state->mu);
  if (req.created) ++state->live_buffers;
  state->requests.push_back(std::move(req));
}

void ParamsCreateImmed(wl_client*, wl_resource* r, uint32_t, int32_t, int32_t,
                       uint32_t, uint32_t) {
  wl_resource_post_error(r, ZWP_LINUX_BUFFER_PARAMS_V1_ERROR_INVALID_WL_BUFFER,
                         "the fake compositor takes create only");
}

const struct zwp_linux_buffer_params_v1_interface kParamsImpl = {
    .destroy = DestroyResource,
    .add = ParamsAdd,
    .create = ParamsCreate,
    .create_immed = ParamsCreateImmed,
};

void CreateParams(wl_client* client, wl_resource* r, uint32_t id) {
  wl_resource* params = wl_resource_create(
      client, &zwp_linux_buffer_params_v1_interface,
      wl_resource_get_version(r), id);
  auto* p = new Params{static_cast<State*>(wl_resource_get_user_data(r)), {}};
  wl_resource_set_implementation(params, &kParamsImpl, p, [](wl_resource* res) {
    delete static_cast<Params*>(wl_resource_get_user_data(res));
  });
}

const struct zwp_linux_dmabuf_v1_interface kDmabufImpl = {
    .destroy = DestroyResource,
    .create_params = CreateParams,
    .get_default_feedback = nullptr,  // version 4: not offered
    .get_surface_feedback = nullptr,
};

void BindDmabuf(wl_client* client, void* data, uint32_t version, uint32_t id) {
  auto* state = static_cast<State*>(data);
  wl_resource* r =
      wl_resource_create(client, &zwp_linux_dmabuf_v1_interface, version, id);
  wl_resource_set_implementation(r, &kDmabufImpl, state, nullptr);
  for (const auto& [fourcc, modifier] : state->formats) {
    zwp_linux_dmabuf_v1_send_format(r, fourcc);
    zwp_linux_dmabuf_v1_send_modifier(r, fourcc, modifier >> 32,
                                      modifier & 0xffffffff);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeCompositor>> FakeCompositor::Start(
    std::vector<std::pair<uint32_t, uint64_t>> formats, uint32_t refuse_format,
    absl::Duration answer_delay) {
  std::unique_ptr<FakeCompositor> c(new FakeCompositor());
  c->state_ = std::make_unique<State>();
  c->state_->formats = std::move(formats);
  c->state_->refuse_format = refuse_format;
  c->state_->answer_delay = answer_delay;
  char dir[] = "/tmp/halloc-fake-wl-XXXXXX";
  if (!mkdtemp(dir)) return ErrnoStatus(errno, "mkdtemp");
  c->dir_ = dir;
  c->socket_ = c->dir_ + "/wayland-fake";
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) return ErrnoStatus(errno, "socket");
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, c->socket_.c_str(), sizeof(addr.sun_path) - 1);
  if (bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(sock.get(), 8) != 0) {
    return ErrnoStatus(errno, "bind+listen " + c->socket_);
  }
  c->state_->display = wl_display_create();
  if (!c->state_->display) return absl::InternalError("wl_display_create");
  if (wl_display_add_socket_fd(c->state_->display, sock.get()) != 0) {
    return absl::InternalError("wl_display_add_socket_fd");
  }
  (void)sock.release();  // the display owns it now
  wl_global_create(c->state_->display, &zwp_linux_dmabuf_v1_interface, 3,
                   c->state_.get(), BindDmabuf);
  State* state = c->state_.get();
  state->thread = std::thread([state] { wl_display_run(state->display); });
  return c;
}

FakeCompositor::~FakeCompositor() {
  if (state_ && state_->display) {
    wl_display_terminate(state_->display);
    if (state_->thread.joinable()) state_->thread.join();
    wl_display_destroy_clients(state_->display);
    wl_display_destroy(state_->display);
  }
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

std::vector<DmabufRequest> FakeCompositor::requests() const {
  absl::MutexLock lock(&state_->mu);
  return state_->requests;
}

int FakeCompositor::live_buffers() const {
  absl::MutexLock lock(&state_->mu);
  return state_->live_buffers;
}

}  // namespace halloc::wayland::testing
