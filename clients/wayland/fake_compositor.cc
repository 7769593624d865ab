#include "clients/wayland/fake_compositor.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <thread>

#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "linux-dmabuf-unstable-v1-server-protocol.h"

namespace halloc::wayland::testing {

// wl_display's client_created listener, with the state it counts in.
struct ClientCreatedListener {
  wl_listener listener;
  FakeCompositor::State* state;
};

struct FakeCompositor::State {
  wl_display* display = nullptr;
  std::thread thread;
  Options options;
  ClientCreatedListener client_created;
  mutable absl::Mutex mu;
  std::vector<DmabufRequest> requests ABSL_GUARDED_BY(mu);
  int live_buffers ABSL_GUARDED_BY(mu) = 0;
  int shm_pools ABSL_GUARDED_BY(mu) = 0;
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
      ->planes.push_back({plane, offset, stride, (static_cast<uint64_t>(hi) << 32) | lo, st.st_ino,
                          lseek(fd, 0, SEEK_END)});
}

// Why weston 10 or wlroots would end the connection for a create of
// `planes` `height` rows high (out_of_bounds), or nullptr: the union of
// their rules (fake_compositor.h).
const char* OutOfBounds(const std::vector<DmabufPlane>& planes, int32_t height) {
  for (const DmabufPlane& p : planes) {
    const uint64_t row_end = uint64_t{p.offset} + p.stride;
    const uint64_t image_end =
        uint64_t{p.offset} + uint64_t{p.stride} * static_cast<uint64_t>(std::max(height, 0));
    if (row_end > UINT32_MAX || image_end > UINT32_MAX) return "size overflow";
    if (p.fd_size < 0) continue;  // they skip what lseek does not tell
    const uint64_t size = static_cast<uint64_t>(p.fd_size);
    if (p.offset >= size) return "invalid offset";
    if (p.stride == 0 || row_end > size) return "invalid stride";
    if (p.index == 0 && image_end > size) return "invalid buffer stride or height";
  }
  return nullptr;
}

void ParamsCreate(wl_client* client, wl_resource* r, int32_t width,
                  int32_t height, uint32_t format, uint32_t) {
  auto* p = static_cast<Params*>(wl_resource_get_user_data(r));
  State* state = p->state;
  absl::SleepFor(state->options.answer_delay);
  DmabufRequest req{width, height, format, p->planes, false};
  if (const char* why = OutOfBounds(p->planes, height)) {
    wl_resource_post_error(r, ZWP_LINUX_BUFFER_PARAMS_V1_ERROR_OUT_OF_BOUNDS, "%s", why);
  } else if (format == state->options.refuse_format) {
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
  for (const auto& [fourcc, modifier] : state->options.formats) {
    zwp_linux_dmabuf_v1_send_format(r, fourcc);
    zwp_linux_dmabuf_v1_send_modifier(r, fourcc, modifier >> 32,
                                      modifier & 0xffffffff);
  }
}

// Counts one client's wl_shm pools (libwayland-server's wl_shm has no
// hook of its own); freed with the client.
struct ClientWatch {
  wl_listener resource_created;
  wl_listener destroyed;
  State* state;
};

void ResourceCreated(wl_listener* l, void* data) {
  ClientWatch* w = wl_container_of(l, w, resource_created);
  if (strcmp(wl_resource_get_class(static_cast<wl_resource*>(data)), "wl_shm_pool") != 0) return;
  absl::MutexLock lock(&w->state->mu);
  ++w->state->shm_pools;
}

void ClientDestroyed(wl_listener* l, void*) {
  ClientWatch* w = wl_container_of(l, w, destroyed);
  wl_list_remove(&w->resource_created.link);
  wl_list_remove(&w->destroyed.link);
  delete w;
}

void ClientCreated(wl_listener* l, void* data) {
  auto* client = static_cast<wl_client*>(data);
  ClientCreatedListener* created = wl_container_of(l, created, listener);
  auto* w = new ClientWatch{{}, {}, created->state};
  w->resource_created.notify = ResourceCreated;
  w->destroyed.notify = ClientDestroyed;
  wl_client_add_resource_created_listener(client, &w->resource_created);
  wl_client_add_destroy_listener(client, &w->destroyed);
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeCompositor>> FakeCompositor::Start(Options options) {
  std::unique_ptr<FakeCompositor> c(new FakeCompositor());
  c->state_ = std::make_unique<State>();
  c->state_->options = std::move(options);
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
  State* state = c->state_.get();
  wl_global_create(state->display, &zwp_linux_dmabuf_v1_interface, 3, state, BindDmabuf);
  if (!state->options.shm_formats.empty()) {
    if (wl_display_init_shm(state->display) != 0) return absl::InternalError("wl_display_init_shm");
    for (uint32_t format : state->options.shm_formats) {
      if (!wl_display_add_shm_format(state->display, format)) {
        return absl::InternalError("wl_display_add_shm_format");
      }
    }
  }
  state->client_created = {{}, state};
  state->client_created.listener.notify = ClientCreated;
  wl_display_add_client_created_listener(state->display, &state->client_created.listener);
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

int FakeCompositor::shm_pools() const {
  absl::MutexLock lock(&state_->mu);
  return state_->shm_pools;
}

}  // namespace halloc::wayland::testing
