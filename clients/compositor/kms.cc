#include "clients/compositor/kms.h"

#include <drm.h>
#include <drm_fourcc.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/compositor/drm_device.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::compositor {

struct PlaneInfo {
  ObjectProps props;
  std::vector<uint32_t> formats;
};

struct KmsDisplay::State {
  std::shared_ptr<DrmDevice> device;
  DisplayOptions options;
  ObjectProps connector, crtc;
  PlaneInfo primary, overlay;  // overlay.props.object_id 0: none
  ObjectProps writeback;       // object_id 0: none
  drmModeModeInfo mode = {};
  uint32_t mode_blob = 0;
  bool on = false;          // the mode is set
  bool overlay_on = false;  // the overlay plane shows something
  uint64_t flips = 0;
  bool flip_done = false;
  // A committed flip whose event has not come: its wait timed out. Its
  // event is taken before the next commit (which the kernel would refuse
  // with EBUSY meanwhile), never taken for the next flip's.
  bool flip_pending = false;

  int fd() const { return device->fd(); }
  ~State();
};

namespace {

using AtomicReq = std::unique_ptr<drmModeAtomicReq, decltype(&drmModeAtomicFree)>;

absl::Status AddProp(drmModeAtomicReq* req, const ObjectProps& obj, absl::string_view name,
                     uint64_t value) {
  ASSIGN_OR_RETURN(const uint32_t id, obj.Id(name));
  const int r = drmModeAtomicAddProperty(req, obj.object_id, id, value);
  if (r < 0) return ErrnoStatus(-r, absl::StrCat("atomic property ", name));
  return absl::OkStatus();
}

// The part of `fb` a plane shows: `src`, or all of it when src is empty.
Rect SourceRect(const Framebuffer& fb, const Rect& src) {
  if (src.width == 0 || src.height == 0) return {0, 0, fb.width(), fb.height()};
  return src;
}

// Sets `plane` to show `src` of `fb` (16.16 fixed point) at `dst`, or turns
// it off (fb == nullptr).
absl::Status AddPlane(drmModeAtomicReq* req, const ObjectProps& plane, uint32_t crtc_id,
                      const Framebuffer* fb, const Rect& dst, const Rect& src = {}) {
  const bool on = fb != nullptr;
  RETURN_IF_ERROR(AddProp(req, plane, "FB_ID", on ? fb->id() : 0));
  RETURN_IF_ERROR(AddProp(req, plane, "CRTC_ID", on ? crtc_id : 0));
  if (!on) return absl::OkStatus();
  const Rect s = SourceRect(*fb, src);
  RETURN_IF_ERROR(AddProp(req, plane, "SRC_X", uint64_t(s.x) << 16));
  RETURN_IF_ERROR(AddProp(req, plane, "SRC_Y", uint64_t(s.y) << 16));
  RETURN_IF_ERROR(AddProp(req, plane, "SRC_W", uint64_t(s.width) << 16));
  RETURN_IF_ERROR(AddProp(req, plane, "SRC_H", uint64_t(s.height) << 16));
  RETURN_IF_ERROR(AddProp(req, plane, "CRTC_X", uint64_t(int64_t(dst.x))));
  RETURN_IF_ERROR(AddProp(req, plane, "CRTC_Y", uint64_t(int64_t(dst.y))));
  RETURN_IF_ERROR(AddProp(req, plane, "CRTC_W", dst.width));
  return AddProp(req, plane, "CRTC_H", dst.height);
}

// Waits until `fd` is readable (a signalled sync_file, a DRM event).
absl::Status WaitReadable(int fd, absl::Duration timeout, absl::string_view what) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd p = {fd, POLLIN, 0};
    const int ms = int(std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()), 0,
                                           std::numeric_limits<int>::max()));
    const int n = ::poll(&p, 1, ms);
    if (n > 0 && (p.revents & POLLIN)) return absl::OkStatus();
    if (n > 0) {  // POLLNVAL, POLLERR: not a signal
      return absl::InternalError(absl::StrCat("poll for ", what, ": revents ", p.revents));
    }
    if (n == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": nothing after ", absl::FormatDuration(timeout)));
    }
    if (errno != EINTR) return ErrnoStatus(errno, absl::StrCat("poll for ", what));
  }
}

void OnFlip(int, unsigned, unsigned, unsigned, void* data) {
  auto* state = static_cast<KmsDisplay::State*>(data);
  state->flip_done = true;
  state->flip_pending = false;
  ++state->flips;
}

absl::StatusOr<PlaneInfo> FindPlane(int fd, uint32_t crtc_index, uint64_t type) {
  drmModePlaneRes* res = drmModeGetPlaneResources(fd);
  if (res == nullptr) return ErrnoStatus(errno, "drmModeGetPlaneResources");
  absl::StatusOr<PlaneInfo> found = absl::NotFoundError(
      absl::StrCat("no ", type == DRM_PLANE_TYPE_PRIMARY ? "primary" : "overlay",
                   " plane for CRTC index ", crtc_index));
  for (uint32_t i = 0; i < res->count_planes && !found.ok(); ++i) {
    drmModePlane* plane = drmModeGetPlane(fd, res->planes[i]);
    if (plane == nullptr) continue;
    if (plane->possible_crtcs & (1u << crtc_index)) {
      absl::StatusOr<ObjectProps> props = GetProps(fd, plane->plane_id, DRM_MODE_OBJECT_PLANE);
      const auto kind = props.ok() ? props->values.find("type") : props->values.end();
      if (props.ok() && kind != props->values.end() && kind->second == type) {
        found =
            PlaneInfo{*std::move(props),
                      std::vector<uint32_t>(plane->formats, plane->formats + plane->count_formats)};
      }
    }
    drmModeFreePlane(plane);
  }
  drmModeFreePlaneResources(res);
  return found;
}

// The CRTC index an encoder of `conn` can drive; -1 if none.
int CrtcIndexFor(int fd, const drmModeConnector* conn, uint32_t want_mask) {
  for (int i = 0; i < conn->count_encoders; ++i) {
    drmModeEncoder* enc = drmModeGetEncoder(fd, conn->encoders[i]);
    if (enc == nullptr) continue;
    const uint32_t mask = enc->possible_crtcs & want_mask;
    drmModeFreeEncoder(enc);
    if (mask != 0) return __builtin_ctz(mask);
  }
  return -1;
}

absl::StatusOr<std::shared_ptr<DrmDevice>> OpenByDriver(absl::string_view driver) {
  std::vector<std::string> seen;
  for (int i = 0; i < 16; ++i) {
    std::string path = absl::StrCat("/dev/dri/card", i);
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) continue;
    drmVersion* v = drmGetVersion(fd.get());
    if (v == nullptr) continue;
    const std::string name(v->name, v->name_len);
    drmFreeVersion(v);
    if (name == driver) return std::make_shared<DrmDevice>(std::move(fd), std::move(path));
    seen.push_back(absl::StrCat(path, " (", name, ")"));
  }
  return absl::NotFoundError(
      absl::StrCat("no DRM device with driver \"", driver, "\" among /dev/dri/card*: ",
                   seen.empty() ? "none could be opened" : absl::StrJoin(seen, ", ")));
}

}  // namespace

KmsDisplay::State::~State() {
  if (device == nullptr || !device->Owned()) return;  // a forked child: the parent's screen
  if (on) {
    AtomicReq req(drmModeAtomicAlloc(), &drmModeAtomicFree);
    absl::Status s = AddPlane(req.get(), primary.props, 0, nullptr, {});
    if (overlay.props.object_id != 0) s.Update(AddPlane(req.get(), overlay.props, 0, nullptr, {}));
    if (writeback.object_id != 0) s.Update(AddProp(req.get(), writeback, "CRTC_ID", 0));
    s.Update(AddProp(req.get(), connector, "CRTC_ID", 0));
    s.Update(AddProp(req.get(), crtc, "ACTIVE", 0));
    s.Update(AddProp(req.get(), crtc, "MODE_ID", 0));
    if (s.ok()) drmModeAtomicCommit(fd(), req.get(), DRM_MODE_ATOMIC_ALLOW_MODESET, nullptr);
  }
  if (mode_blob != 0) drmModeDestroyPropertyBlob(fd(), mode_blob);
}

KmsDisplay::KmsDisplay(std::unique_ptr<State> state) : state_(std::move(state)) {}
KmsDisplay::KmsDisplay(KmsDisplay&&) noexcept = default;
KmsDisplay& KmsDisplay::operator=(KmsDisplay&&) noexcept = default;
KmsDisplay::~KmsDisplay() = default;

// A moved-from display answers as one with no screen: sizes 0, nothing
// on it; Import, CreateDumb and Present are FAILED_PRECONDITION.
uint32_t KmsDisplay::width() const { return state_ ? state_->mode.hdisplay : 0; }
uint32_t KmsDisplay::height() const { return state_ ? state_->mode.vdisplay : 0; }
bool KmsDisplay::has_overlay() const { return state_ && state_->overlay.props.object_id != 0; }
bool KmsDisplay::has_writeback() const { return state_ && state_->writeback.object_id != 0; }
const std::vector<uint32_t>& KmsDisplay::primary_formats() const {
  static const std::vector<uint32_t> none;
  return state_ ? state_->primary.formats : none;
}
const std::vector<uint32_t>& KmsDisplay::overlay_formats() const {
  static const std::vector<uint32_t> none;
  return state_ ? state_->overlay.formats : none;
}
uint64_t KmsDisplay::flips() const { return state_ ? state_->flips : 0; }

absl::Status KmsDisplay::Usable() const {
  if (state_ == nullptr) return absl::FailedPreconditionError("this display was moved from");
  if (!state_->device->Owned()) {
    return absl::FailedPreconditionError(
        "this display was opened by this process's parent (before a fork)");
  }
  return absl::OkStatus();
}

absl::StatusOr<KmsDisplay> KmsDisplay::Open(absl::string_view driver,
                                            const DisplayOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  ASSIGN_OR_RETURN(state->device, OpenByDriver(driver));
  const int fd = state->fd();
  const std::string& path = state->device->path();
  if (drmSetClientCap(fd, DRM_CLIENT_CAP_UNIVERSAL_PLANES, 1) != 0 ||
      drmSetClientCap(fd, DRM_CLIENT_CAP_ATOMIC, 1) != 0) {
    return absl::UnimplementedError(
        absl::StrCat(path, " (", driver, ") has no atomic modesetting: ", strerror(errno)));
  }
  const bool can_writeback = drmSetClientCap(fd, DRM_CLIENT_CAP_WRITEBACK_CONNECTORS, 1) == 0;

  drmModeRes* res = drmModeGetResources(fd);
  if (res == nullptr) return ErrnoStatus(errno, absl::StrCat("drmModeGetResources ", path));
  // possible_crtcs is a 32-bit mask: 32 CRTCs fill it (a shift by 32 is
  // undefined).
  const uint32_t all_crtcs =
      res->count_crtcs >= 32 ? ~0u : (1u << std::max(res->count_crtcs, 0)) - 1;
  int crtc_index = -1;
  uint32_t writeback_id = 0;
  absl::Status status = absl::NotFoundError(
      absl::StrCat(path, " (", driver, ") has no connected connector with a mode"));
  for (int i = 0; i < res->count_connectors; ++i) {
    drmModeConnector* conn = drmModeGetConnector(fd, res->connectors[i]);
    if (conn == nullptr) continue;
    if (conn->connector_type == DRM_MODE_CONNECTOR_WRITEBACK) {
      if (writeback_id == 0) writeback_id = conn->connector_id;
    } else if (crtc_index < 0 && conn->connection == DRM_MODE_CONNECTED && conn->count_modes > 0) {
      const drmModeModeInfo* mode = nullptr;
      for (int m = 0; m < conn->count_modes; ++m) {
        const drmModeModeInfo& mi = conn->modes[m];
        const bool want = options.width == 0
                              ? (mi.type & DRM_MODE_TYPE_PREFERRED) != 0
                              : mi.hdisplay == options.width && mi.vdisplay == options.height;
        if (want) {
          mode = &mi;
          break;
        }
      }
      if (mode == nullptr && options.width == 0) mode = &conn->modes[0];
      crtc_index = mode != nullptr ? CrtcIndexFor(fd, conn, all_crtcs) : -1;
      if (mode == nullptr) {
        status =
            absl::NotFoundError(absl::StrCat(path, ": connector ", conn->connector_id, " has no ",
                                             options.width, "x", options.height, " mode"));
      } else if (crtc_index < 0) {
        status =
            absl::NotFoundError(absl::StrCat(path, ": no CRTC for connector ", conn->connector_id));
      } else {
        state->mode = *mode;
        absl::StatusOr<ObjectProps> props =
            GetProps(fd, conn->connector_id, DRM_MODE_OBJECT_CONNECTOR);
        status = props.status();
        if (props.ok()) state->connector = *std::move(props);
        state->crtc.object_id = res->crtcs[crtc_index];
      }
    }
    drmModeFreeConnector(conn);
  }
  drmModeFreeResources(res);
  RETURN_IF_ERROR(status);
  ASSIGN_OR_RETURN(state->crtc, GetProps(fd, state->crtc.object_id, DRM_MODE_OBJECT_CRTC));
  ASSIGN_OR_RETURN(state->primary, FindPlane(fd, crtc_index, DRM_PLANE_TYPE_PRIMARY));
  absl::StatusOr<PlaneInfo> overlay = FindPlane(fd, crtc_index, DRM_PLANE_TYPE_OVERLAY);
  if (overlay.ok()) state->overlay = *std::move(overlay);
  if (can_writeback && writeback_id != 0) {
    drmModeConnector* wb = drmModeGetConnector(fd, writeback_id);
    const bool usable = wb != nullptr && CrtcIndexFor(fd, wb, 1u << crtc_index) == crtc_index;
    if (wb != nullptr) drmModeFreeConnector(wb);
    if (usable) {
      ASSIGN_OR_RETURN(state->writeback, GetProps(fd, writeback_id, DRM_MODE_OBJECT_CONNECTOR));
    }
  }
  if (drmModeCreatePropertyBlob(fd, &state->mode, sizeof(state->mode), &state->mode_blob) != 0) {
    return ErrnoStatus(errno, "mode blob");
  }
  return KmsDisplay(std::move(state));
}

absl::StatusOr<Framebuffer> KmsDisplay::Import(const halloc::Buffer& buffer) {
  RETURN_IF_ERROR(Usable());
  RETURN_IF_ERROR(CheckScanoutLayout(buffer));
  const v1::BufferLayout& l = buffer.layout();
  Framebuffer fb;
  fb.device_ = state_->device;
  fb.width_ = l.width();
  fb.height_ = l.height();
  fb.format_ = l.format();
  fb.buffer_id_ = buffer.id();
  absl::StatusOr<uint32_t> imported = state_->device->ImportHandle(buffer.fd());
  if (!imported.ok()) {
    return Prefixed(imported.status(), absl::StrCat("buffer ", buffer.id()));
  }
  const uint32_t handle = *imported;
  fb.handles_.push_back(handle);  // given back by fb from here on
  // A driver without modifier support (radeon, older amdgpu and nouveau)
  // refuses the flag outright; LINEAR is what it means by none.
  uint64_t has_modifiers = 0;
  const bool modifiers_known =
      drmGetCap(state_->fd(), DRM_CAP_ADDFB2_MODIFIERS, &has_modifiers) == 0 && has_modifiers;
  const bool implicit = l.modifier() == DRM_FORMAT_MOD_INVALID ||
                        (l.modifier() == DRM_FORMAT_MOD_LINEAR && !modifiers_known);
  if (!implicit && !modifiers_known) {
    return absl::FailedPreconditionError(absl::StrCat(
        state_->device->path(), " takes no framebuffer modifiers; buffer ", buffer.id(),
        " has modifier 0x", absl::Hex(l.modifier())));
  }
  uint32_t handles[4] = {}, pitches[4] = {}, offsets[4] = {};
  uint64_t modifiers[4] = {};  // zero when implicit: the kernel refuses any other
  for (int i = 0; i < l.planes_size(); ++i) {
    handles[i] = handle;
    pitches[i] = uint32_t(l.planes(i).stride());
    offsets[i] = uint32_t(l.planes(i).offset());
    modifiers[i] = implicit ? 0 : l.modifier();
  }
  const uint32_t flags = implicit ? 0 : DRM_MODE_FB_MODIFIERS;
  if (drmModeAddFB2WithModifiers(state_->fd(), l.width(), l.height(), l.format(), handles, pitches,
                                 offsets, modifiers, &fb.id_, flags) != 0) {
    return ErrnoStatus(
        errno, absl::StrCat("AddFB2 of buffer ", buffer.id(), " (", FourccName(l.format()), " ",
                            l.width(), "x", l.height(), ", stride ", pitches[0], ")"));
  }
  return fb;
}

absl::StatusOr<DumbFramebuffer> KmsDisplay::CreateDumb(uint32_t width, uint32_t height) {
  RETURN_IF_ERROR(Usable());
  const int fd = state_->fd();
  drm_mode_create_dumb create = {};
  create.width = width;
  create.height = height;
  create.bpp = 32;
  if (drmIoctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &create) != 0) {
    return ErrnoStatus(errno, absl::StrCat("CREATE_DUMB ", width, "x", height));
  }
  DumbFramebuffer dumb;
  dumb.fb.device_ = state_->device;
  state_->device->AdoptHandle(create.handle);
  dumb.fb.handles_.push_back(create.handle);
  dumb.fb.width_ = width;
  dumb.fb.height_ = height;
  dumb.fb.format_ = DRM_FORMAT_XRGB8888;
  dumb.stride = create.pitch;
  const uint32_t handles[4] = {create.handle}, pitches[4] = {create.pitch}, offsets[4] = {};
  if (drmModeAddFB2(fd, width, height, DRM_FORMAT_XRGB8888, handles, pitches, offsets, &dumb.fb.id_,
                    0) != 0) {
    return ErrnoStatus(errno, "AddFB2 of a dumb buffer");
  }
  drm_mode_map_dumb map = {};
  map.handle = create.handle;
  if (drmIoctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &map) != 0) return ErrnoStatus(errno, "MAP_DUMB");
  void* p = ::mmap(nullptr, create.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, map.offset);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap of a dumb buffer");
  dumb.data = p;
  dumb.size = create.size;
  return dumb;
}

namespace {

// The fence waited for must be that of the memory shown or written. (For
// a framebuffer Ours() let through: never an empty one.)
absl::Status MadeFrom(const Framebuffer& fb, const halloc::Buffer& buffer, const char* name) {
  if (fb.buffer_id() == buffer.id()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("the ", name, " framebuffer ",
                   fb.buffer_id() == 0 ? std::string("is not one of a hallocd buffer")
                                       : absl::StrCat("was made from buffer ", fb.buffer_id()),
                   ", not from buffer ", buffer.id(), " given with it"));
}

// Waits for `buffer`'s implicit fences: its writers' (kRead: to read it),
// or everyone's (kReadWrite: to write it). Kernels without the ioctl leave
// it to KMS's own implicit sync.
absl::Status WaitForFences(const halloc::Buffer& buffer, Access access, absl::Duration timeout,
                           absl::string_view what) {
  absl::StatusOr<UniqueFd> fence = buffer.ExportSyncFile(access);
  if (!fence.ok() && fence.status().code() == absl::StatusCode::kUnimplemented) {
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(fence.status());
  return WaitReadable(fence->get(), timeout, absl::StrCat(what, " of buffer ", buffer.id()));
}

}  // namespace

absl::Status KmsDisplay::Present(const PlaneFrame& primary, const PlaneFrame* overlay,
                                 const WritebackFrame* writeback) {
  RETURN_IF_ERROR(Usable());
  // What can be refused at once is, before any wait for a fence.
  RETURN_IF_ERROR(Ours(primary.fb, "primary"));
  if (overlay != nullptr) RETURN_IF_ERROR(Ours(overlay->fb, "overlay"));
  if (writeback != nullptr) {
    if (!has_writeback()) {
      return absl::FailedPreconditionError("the display has no writeback connector");
    }
    RETURN_IF_ERROR(Ours(writeback->fb, "writeback"));
  }
  RETURN_IF_ERROR(MadeFrom(primary.fb, primary.buffer, "primary plane's"));
  if (overlay != nullptr)
    RETURN_IF_ERROR(MadeFrom(overlay->fb, overlay->buffer, "overlay plane's"));
  if (writeback != nullptr)
    RETURN_IF_ERROR(MadeFrom(writeback->fb, writeback->buffer, "writeback"));
  const absl::Duration timeout = state_->options.timeout;
  for (const PlaneFrame* f : {&primary, overlay}) {
    if (f != nullptr)
      RETURN_IF_ERROR(WaitForFences(f->buffer, Access::kRead, timeout, "producer fence"));
  }
  if (writeback != nullptr) {
    RETURN_IF_ERROR(WaitForFences(writeback->buffer, Access::kReadWrite, timeout,
                                  "the fences of those still using the writeback target"));
  }
  const Framebuffer* wb = writeback != nullptr ? &writeback->fb : nullptr;
  const PlaneFramebuffer primary_fb{primary.fb, primary.dst, primary.src};
  if (overlay == nullptr) return PresentFramebuffers(primary_fb, nullptr, wb);
  const PlaneFramebuffer overlay_fb{overlay->fb, overlay->dst, overlay->src};
  return PresentFramebuffers(primary_fb, &overlay_fb, wb);
}

absl::Status KmsDisplay::Ours(const Framebuffer& fb, const char* name) const {
  if (fb.id() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the ", name, " framebuffer is empty (moved from, or reset)"));
  }
  // Framebuffer ids are the device's, and any master may name any of them:
  // one of another device's would name whatever this one has by that id.
  if (fb.device_ != state_->device) {
    return absl::InvalidArgumentError(absl::StrCat("the ", name,
                                                   " framebuffer was made on another device than ",
                                                   state_->device->path(), "'s"));
  }
  return absl::OkStatus();
}

absl::Status KmsDisplay::PresentFramebuffers(const PlaneFramebuffer& primary,
                                             const PlaneFramebuffer* overlay,
                                             const Framebuffer* writeback) {
  RETURN_IF_ERROR(Usable());
  State& s = *state_;
  auto check = [&](const PlaneFramebuffer& p, const PlaneInfo& plane,
                   const char* name) -> absl::Status {
    const Framebuffer& fb = p.fb;
    RETURN_IF_ERROR(Ours(fb, name));
    if (std::find(plane.formats.begin(), plane.formats.end(), fb.format()) == plane.formats.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", name, " plane does not take ", FourccName(fb.format())));
    }
    const Rect& dst = p.dst;
    if (dst.width == 0 || dst.height == 0 || dst.x < 0 || dst.y < 0 ||
        uint64_t(dst.x) + dst.width > width() || uint64_t(dst.y) + dst.height > height()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", name, " plane's rectangle ", dst.width, "x", dst.height, "+", dst.x,
                       "+", dst.y, " is not inside the ", width(), "x", height(), " screen"));
    }
    const Rect src = SourceRect(fb, p.src);
    if (src.x < 0 || src.y < 0 || uint64_t(src.x) + src.width > fb.width() ||
        uint64_t(src.y) + src.height > fb.height()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", name, " plane's source ", src.width, "x", src.height, "+", src.x, "+", src.y,
          " is not inside the ", fb.width(), "x", fb.height(), " framebuffer"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(primary, s.primary, "primary"));
  if (overlay != nullptr) {
    if (!has_overlay()) return absl::FailedPreconditionError("the display has no overlay plane");
    RETURN_IF_ERROR(check(*overlay, s.overlay, "overlay"));
  }
  if (writeback != nullptr && !has_writeback()) {
    return absl::FailedPreconditionError("the display has no writeback connector");
  }
  if (writeback != nullptr) RETURN_IF_ERROR(Ours(*writeback, "writeback"));

  AtomicReq req(drmModeAtomicAlloc(), &drmModeAtomicFree);
  uint32_t flags = DRM_MODE_PAGE_FLIP_EVENT;
  if (!s.on) {
    flags |= DRM_MODE_ATOMIC_ALLOW_MODESET;
    RETURN_IF_ERROR(AddProp(req.get(), s.connector, "CRTC_ID", s.crtc.object_id));
    RETURN_IF_ERROR(AddProp(req.get(), s.crtc, "MODE_ID", s.mode_blob));
    RETURN_IF_ERROR(AddProp(req.get(), s.crtc, "ACTIVE", 1));
    if (has_writeback()) {
      RETURN_IF_ERROR(AddProp(req.get(), s.writeback, "CRTC_ID", s.crtc.object_id));
    }
  } else {
    flags |= DRM_MODE_ATOMIC_NONBLOCK;
  }
  RETURN_IF_ERROR(AddPlane(req.get(), s.primary.props, s.crtc.object_id, &primary.fb, primary.dst,
                           primary.src));
  if (overlay != nullptr) {
    RETURN_IF_ERROR(AddPlane(req.get(), s.overlay.props, s.crtc.object_id, &overlay->fb,
                             overlay->dst, overlay->src));
  } else if (s.overlay_on) {
    RETURN_IF_ERROR(AddPlane(req.get(), s.overlay.props, s.crtc.object_id, nullptr, {}));
  }
  int32_t out_fence = -1;
  if (writeback != nullptr) {
    RETURN_IF_ERROR(AddProp(req.get(), s.writeback, "WRITEBACK_FB_ID", writeback->id()));
    RETURN_IF_ERROR(AddProp(req.get(), s.writeback, "WRITEBACK_OUT_FENCE_PTR",
                            uint64_t(reinterpret_cast<uintptr_t>(&out_fence))));
  }
  drmEventContext events = {};
  events.version = 2;
  events.page_flip_handler = &OnFlip;
  while (s.flip_pending) {  // the last flip timed out: its event first
    RETURN_IF_ERROR(WaitReadable(s.fd(), s.options.timeout, "the previous page flip's event"));
    if (drmHandleEvent(s.fd(), &events) != 0) return ErrnoStatus(errno, "drmHandleEvent");
  }
  s.flip_done = false;
  if (drmModeAtomicCommit(s.fd(), req.get(), flags, &s) != 0) {
    const std::string what = absl::StrCat("atomic commit on ", s.device->path());
    if (errno == ERANGE) {  // drm_atomic_helper_check_plane_state's answer
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a plane cannot scale its source rectangle to its destination (ERANGE)"));
    }
    return ErrnoStatus(errno, what);
  }
  UniqueFd writeback_fence(out_fence);
  s.on = true;
  s.overlay_on = overlay != nullptr;
  s.flip_pending = true;
  while (!s.flip_done) {
    RETURN_IF_ERROR(WaitReadable(s.fd(), s.options.timeout, "page flip event"));
    if (drmHandleEvent(s.fd(), &events) != 0) return ErrnoStatus(errno, "drmHandleEvent");
  }
  if (writeback_fence) {
    RETURN_IF_ERROR(WaitReadable(writeback_fence.get(), s.options.timeout, "writeback fence"));
  }
  return absl::OkStatus();
}

}  // namespace halloc::compositor
