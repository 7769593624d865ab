#include "clients/wayland/buffer.h"

#include <drm_fourcc.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/numeric/int128.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "linux-dmabuf-unstable-v1-client-protocol.h"
#include "service/layout/format.h"

namespace halloc::wayland {
namespace {

const wl_buffer_listener kBufferListener = {
    .release = [](void* data, wl_buffer*) { *static_cast<bool*>(data) = false; },
};

absl::Status CheckImage(const Buffer& buffer) {
  const v1::BufferLayout& l = buffer.layout();
  if (l.planes_size() == 0 || l.width() == 0 || l.height() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d is not an image (a blob has no layout): allocate it from "
        "an image descriptor",
        buffer.id()));
  }
  // linux-dmabuf takes planes 0-3; a fifth is a protocol error, which
  // would end the whole connection.
  if (l.planes_size() > 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d has %d planes; linux-dmabuf takes at most 4", buffer.id(), l.planes_size()));
  }
  if (l.width() > INT32_MAX || l.height() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d is %dx%d, more than Wayland's int32 sizes", buffer.id(),
        l.width(), l.height()));
  }
  for (const v1::PlaneLayout& p : l.planes()) {
    if (p.offset() > UINT32_MAX || p.stride() > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "buffer %d has a plane at offset %d, stride %d: more than Wayland's "
          "32-bit offsets and strides",
          buffer.id(), p.offset(), p.stride()));
    }
  }
  return absl::OkStatus();
}

// The bytes behind `fd` as the kernel tells them (what a compositor finds):
// a regular file's (a memfd's) size, else where lseek puts its end (a
// dma-buf's size), else nullopt (a kernel that does not seek dma-bufs).
std::optional<uint64_t> FdSize(int fd) {
  struct stat st = {};
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  const off_t end = lseek(fd, 0, SEEK_END);
  if (end < 0) return std::nullopt;
  return static_cast<uint64_t>(end);
}

// The rows plane `i` of `l` has: the image's height over the format's
// vertical subsampling (the format's, not the layout's word: a compositor
// goes by the format), rounded up as hallocd counts them (a compositor
// rounding down reads no more). A format halloc does not know, or a plane
// past its table, counts every row of the image.
uint64_t PlaneRows(const v1::BufferLayout& l, int i) {
  const format::FormatInfo* f = format::Find(l.format());
  const uint64_t v_sub = f && i < f->num_planes ? std::max<uint64_t>(f->planes[i].v_sub, 1) : 1;
  return (uint64_t{l.height()} + v_sub - 1) / v_sub;
}

// OK when the layout `l` of buffer `id` lies within `size` bytes (those of
// `what`, for the message): its own size, and every plane's offset plus its
// stride times its rows (PlaneRows). INVALID_ARGUMENT naming what does not.
absl::Status CheckPlanesFit(uint64_t id, const v1::BufferLayout& l, uint64_t size,
                            absl::string_view what) {
  if (l.size() > size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d: its layout takes %d bytes, more than the %d of %s", id, l.size(), size, what));
  }
  for (int i = 0; i < l.planes_size(); ++i) {
    const v1::PlaneLayout& p = l.planes(i);
    const uint64_t rows = PlaneRows(l, i);
    if (absl::uint128(p.offset()) + absl::uint128(p.stride()) * rows > size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("buffer %d: plane %d, %d rows of stride %d at offset %d, runs past the "
                          "%d bytes of %s",
                          id, i, rows, p.stride(), p.offset(), size, what));
    }
  }
  return absl::OkStatus();
}

// What weston 10 (libweston/linux-dmabuf.c) and wlroots check of each plane
// of a create, checked here first: there a failure is the protocol error
// out_of_bounds, which ends the whole connection (every window and buffer
// on it), not this buffer. They want offset + stride * height within 32
// bits, and where lseek gives the fd's size, a stride of at least 1 and
// the plane (plane 0's rows; they cannot know the others') within it.
// Here a stride is never 0, and all of the layout lies within the fd's
// size where it is known: a compositor derives the other planes' rows from
// the format, and would read past the end.
absl::Status CheckDmabufBounds(const Buffer& buffer) {
  const v1::BufferLayout& l = buffer.layout();
  for (int i = 0; i < l.planes_size(); ++i) {
    const v1::PlaneLayout& p = l.planes(i);
    if (p.stride() == 0 ||
        absl::uint128(p.offset()) + absl::uint128(p.stride()) * l.height() > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "buffer %d: plane %d, %d rows of stride %d at offset %d: linux-dmabuf wants a stride "
          "of at least 1 and offset + stride * height within 32 bits",
          buffer.id(), i, l.height(), p.stride(), p.offset()));
    }
  }
  const std::optional<uint64_t> size = FdSize(buffer.fd());
  if (!size) return absl::OkStatus();  // nor can the compositor tell
  return CheckPlanesFit(buffer.id(), l, *size, "its fd");
}

// Whether `fd` is open read-only.
absl::StatusOr<bool> ReadOnly(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoStatus(errno, "fcntl F_GETFL on the buffer's fd");
  return (flags & O_ACCMODE) == O_RDONLY;
}

// `buffer` as a wl_shm buffer over `fd`: the buffer's own fd, or a copy's
// memfd of the same size.
absl::StatusOr<wl_buffer*> CreateShm(Display& display, const Buffer& buffer,
                                     int fd) {
  const v1::BufferLayout& l = buffer.layout();
  if (!display.shm()) {
    return absl::FailedPreconditionError("the compositor offers no wl_shm");
  }
  const uint32_t format = ShmFormatFor(l.format());
  if (!display.ShmSupports(format)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the compositor's wl_shm does not take %s", FourccName(l.format())));
  }
  RETURN_IF_ERROR(CheckShmLayout(buffer.id(), l));
  const v1::PlaneLayout& p0 = l.planes(0);
  if (buffer.size() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d is %d bytes, more than a wl_shm pool may be", buffer.id(),
        buffer.size()));
  }
  // What libwayland-server checks of a pool buffer (shm_pool_create_buffer),
  // checked here first: there a failure is a protocol error, which ends
  // the whole connection (every window and buffer on it), not this buffer.
  const uint64_t stride = p0.stride(), height = l.height();
  if (stride < l.width() || INT32_MAX / stride <= height || p0.offset() > buffer.size() ||
      stride * height > buffer.size() - p0.offset()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d: %d rows of stride %d at offset %d do not fit its %d bytes as wl_shm wants "
        "them (stride at least the width, all of it in the pool)",
        buffer.id(), height, stride, p0.offset(), buffer.size()));
  }
  // The pool is the buffer's size by its description (hallocd's word): the
  // fd must have that many bytes (the compositor's reads past a memfd's end
  // fault), and all of the layout must lie in the pool. libwayland-server
  // checks plane 0's rows only, and a compositor finds the other planes by
  // the format (NV12's chroma after the luma rows): past the pool's end
  // where the description is short.
  if (const std::optional<uint64_t> real = FdSize(fd); real && *real < buffer.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("buffer %d is %d bytes by its description but its fd has %d", buffer.id(),
                        buffer.size(), *real));
  }
  RETURN_IF_ERROR(CheckPlanesFit(buffer.id(), l, buffer.size(), "its wl_shm pool"));
  wl_shm_pool* pool = wl_shm_create_pool(display.shm(), fd,
                                         static_cast<int32_t>(buffer.size()));
  wl_buffer* wl = wl_shm_pool_create_buffer(
      pool, static_cast<int32_t>(p0.offset()), static_cast<int32_t>(l.width()),
      static_cast<int32_t>(l.height()), static_cast<int32_t>(p0.stride()),
      format);
  // The buffer keeps the pool's memory; the pool itself is not needed.
  wl_shm_pool_destroy(pool);
  // A refused fd (one the compositor cannot mmap) is a protocol error:
  // find out now, not at the first attach.
  absl::Status s = display.Roundtrip();
  if (!s.ok()) {
    wl_buffer_destroy(wl);
    return Prefixed(s, absl::StrCat("wl_shm refused buffer ", buffer.id()));
  }
  return wl;
}

// What a zwp_linux_buffer_params_v1's answer goes to. On the heap: a
// caller that stopped waiting leaves it (abandoned) to the listener, which
// destroys the wl_buffer a late `created` brings (else the compositor would
// keep it, and a reference to the dma-buf, for the connection's life), then
// the params, then itself.
struct DmabufAnswer {
  bool done = false;
  bool abandoned = false;
  wl_buffer* buffer = nullptr;
};

void AnswerArrived(DmabufAnswer* a, zwp_linux_buffer_params_v1* params, wl_buffer* b) {
  a->done = true;
  if (!a->abandoned) {
    a->buffer = b;
    return;
  }
  if (b != nullptr) wl_buffer_destroy(b);
  zwp_linux_buffer_params_v1_destroy(params);
  delete a;
}

absl::StatusOr<wl_buffer*> CreateDmabuf(Display& display, const Buffer& buffer,
                                        bool check_dmabuf = true,
                                        absl::Duration timeout = absl::Seconds(5)) {
  const v1::BufferLayout& l = buffer.layout();
  if (!display.dmabuf()) {
    return absl::FailedPreconditionError(
        "the compositor offers no zwp_linux_dmabuf_v1 (version 3 or later)");
  }
  if (check_dmabuf && !buffer.is_dmabuf()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "buffer %d is not a dma-buf (backend %s): linux-dmabuf cannot import "
        "it; use wl_shm",
        buffer.id(), buffer.info().backend()));
  }
  const std::optional<uint64_t> modifier = display.DmabufModifierFor(l.format(), l.modifier());
  if (!modifier) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the compositor's linux-dmabuf does not take %s with modifier 0x%x",
        FourccName(l.format()), l.modifier()));
  }
  RETURN_IF_ERROR(CheckDmabufBounds(buffer));
  zwp_linux_buffer_params_v1* params =
      zwp_linux_dmabuf_v1_create_params(display.dmabuf());
  for (int i = 0; i < l.planes_size(); ++i) {
    zwp_linux_buffer_params_v1_add(
        params, buffer.fd(), i, static_cast<uint32_t>(l.planes(i).offset()),
        static_cast<uint32_t>(l.planes(i).stride()), static_cast<uint32_t>(*modifier >> 32),
        static_cast<uint32_t>(*modifier & 0xffffffff));
  }
  static const zwp_linux_buffer_params_v1_listener listener = {
      .created = [](void* data, zwp_linux_buffer_params_v1* p,
                    wl_buffer* b) { AnswerArrived(static_cast<DmabufAnswer*>(data), p, b); },
      .failed =
          [](void* data, zwp_linux_buffer_params_v1* p) {
            AnswerArrived(static_cast<DmabufAnswer*>(data), p, nullptr);
          },
  };
  auto* answer = new DmabufAnswer;
  zwp_linux_buffer_params_v1_add_listener(params, &listener, answer);
  zwp_linux_buffer_params_v1_create(params, static_cast<int32_t>(l.width()),
                                    static_cast<int32_t>(l.height()),
                                    l.format(), 0);
  absl::Status s = display.DispatchUntil([&] { return answer->done; }, timeout,
                                         "zwp_linux_buffer_params_v1.create");
  if (!answer->done) {
    // The answer may still come, with a wl_buffer in it: the listener
    // gives it back then (whoever dispatches this display next). If the
    // connection ends first, the compositor frees it with the connection.
    answer->abandoned = true;
    return s;  // DispatchUntil is OK only once the answer is in
  }
  zwp_linux_buffer_params_v1_destroy(params);
  const DmabufAnswer result = *answer;
  delete answer;
  if (!s.ok()) {
    if (result.buffer) wl_buffer_destroy(result.buffer);
    return s;
  }
  if (!result.buffer) {
    return absl::InternalError(absl::StrFormat(
        "the compositor could not import dma-buf %d (%s %dx%d, modifier 0x%x)",
        buffer.id(), FourccName(l.format()), l.width(), l.height(),
        l.modifier()));
  }
  return result.buffer;
}

}  // namespace

const char* PathName(BufferPath path) {
  switch (path) {
    case BufferPath::kAuto:
      return "auto";
    case BufferPath::kShm:
      return "wl_shm";
    case BufferPath::kShmCopy:
      return "wl_shm copy";
    case BufferPath::kDmabuf:
      return "linux-dmabuf";
  }
  return "?";
}

std::string FourccName(uint32_t fourcc) {
  std::string s(4, ' ');
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>((fourcc >> (8 * i)) & 0xff);
    s[i] = (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return s;
}

absl::Status CheckShmLayout(uint64_t buffer_id, const v1::BufferLayout& l) {
  if (l.planes_size() == 0) return absl::OkStatus();
  const v1::PlaneLayout& p0 = l.planes(0);
  const uint64_t bits0 = std::max<uint64_t>(p0.sample_increment_bits(), 1);
  for (int i = 1; i < l.planes_size(); ++i) {
    const v1::PlaneLayout& prev = l.planes(i - 1);
    const v1::PlaneLayout& p = l.planes(i);
    const uint64_t stride = uint64_t{p0.stride()} * p.sample_increment_bits() / bits0 /
                            std::max<uint64_t>(p.horizontal_subsampling(), 1);
    const uint64_t offset =
        prev.offset() +
        uint64_t{prev.stride()} * (l.height() / std::max<uint64_t>(prev.vertical_subsampling(), 1));
    if (p.stride() != stride || p.offset() != offset) {
      return absl::FailedPreconditionError(
          absl::StrFormat("buffer %d: plane %d is at offset %d with stride %d, where wl_shm "
                          "(one offset and stride for %s %dx%d) puts it at %d with stride %d; "
                          "show it through linux-dmabuf, or allocate a layout wl_shm can "
                          "describe",
                          buffer_id, i, p.offset(), p.stride(), FourccName(l.format()), l.width(),
                          l.height(), offset, stride));
    }
  }
  return absl::OkStatus();
}

uint32_t ShmFormatFor(uint32_t drm_fourcc) {
  switch (drm_fourcc) {
    case DRM_FORMAT_ARGB8888:
      return WL_SHM_FORMAT_ARGB8888;
    case DRM_FORMAT_XRGB8888:
      return WL_SHM_FORMAT_XRGB8888;
    default:
      return drm_fourcc;  // wl_shm's other values are the fourccs
  }
}

absl::StatusOr<WlBuffer> WlBuffer::Create(Display& display,
                                          const Buffer& buffer,
                                          BufferPath path) {
  absl::Status s = CheckImage(buffer);
  if (!s.ok()) return s;
  const bool chosen = path != BufferPath::kAuto;
  if (!chosen) {
    const v1::BufferLayout& l = buffer.layout();
    path = buffer.is_dmabuf() && display.dmabuf() &&
                   display.DmabufModifierFor(l.format(), l.modifier())
               ? BufferPath::kDmabuf
               : BufferPath::kShm;
  }
  if (path == BufferPath::kDmabuf) {
    absl::StatusOr<wl_buffer*> wl = CreateDmabuf(display, buffer);
    if (!wl.ok()) return wl.status();
    return WlBuffer(*wl, path);
  }
  // libwayland-server (1.21, Debian 12's) maps every pool PROT_READ |
  // PROT_WRITE, MAP_SHARED: a read-only fd would cost the connection
  // (wl_shm error invalid_fd). kShm refuses it here, where it can be
  // explained; kAuto copies.
  absl::StatusOr<bool> read_only = ReadOnly(buffer.fd());
  if (!read_only.ok()) return read_only.status();
  if (*read_only && chosen && path == BufferPath::kShm) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "buffer %d's fd is read-only, and wl_shm needs an fd it can map "
        "read-write (libwayland-server maps every pool PROT_READ|PROT_WRITE): "
        "import it read-write, pass a dma-buf through linux-dmabuf, or let "
        "BufferPath::kAuto copy it",
        buffer.id()));
  }
  if (*read_only || path == BufferPath::kShmCopy) {
    return CreateCopy(display, buffer);
  }
  absl::StatusOr<wl_buffer*> wl = CreateShm(display, buffer, buffer.fd());
  if (!wl.ok()) return wl.status();
  return WlBuffer(*wl, path);
}

// kShmCopy: a memfd of the buffer's size, mapped, shared as the wl_shm
// pool; the frame copied in. Sealed at that size: the compositor gets the
// fd read-write, and one that shrank it would make the next Refresh's copy
// fault (SIGBUS).
absl::StatusOr<WlBuffer> WlBuffer::CreateCopy(Display& display,
                                              const Buffer& buffer) {
  auto state = std::make_unique<State>();
  state->copy_fd.reset(memfd_create("halloc-wayland-copy", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!state->copy_fd) return ErrnoStatus(errno, "memfd_create");
  if (ftruncate(state->copy_fd.get(), static_cast<off_t>(buffer.size())) != 0) {
    return ErrnoStatus(errno, "ftruncate the copy's memfd");
  }
  if (fcntl(state->copy_fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus(errno, "seal the copy's memfd");
  }
  void* map = mmap(nullptr, buffer.size(), PROT_READ | PROT_WRITE,
                   MAP_SHARED, state->copy_fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, "mmap the copy's memfd");
  state->copy = map;
  state->copy_size = buffer.size();
  absl::StatusOr<wl_buffer*> wl =
      CreateShm(display, buffer, state->copy_fd.get());
  if (!wl.ok()) return wl.status();
  WlBuffer out(*wl, BufferPath::kShmCopy, std::move(state));
  absl::Status s = out.Refresh(buffer);
  if (!s.ok()) return s;
  return out;
}

absl::Status WlBuffer::Refresh(const Buffer& source) {
  if (path_ != BufferPath::kShmCopy) return absl::OkStatus();
  if (state_->busy) {
    return absl::FailedPreconditionError(
        absl::StrFormat("the compositor has not released the copy of buffer %d yet "
                        "(wl_buffer.release): writing it now could show a torn frame",
                        source.id()));
  }
  if (source.size() != state_->copy_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "buffer %d is %d bytes, its copy %d", source.id(), source.size(),
        state_->copy_size));
  }
  absl::StatusOr<Mapping> m = source.Map(Access::kRead);
  if (!m.ok()) return m.status();
  memcpy(state_->copy, m->data(), state_->copy_size);
  return absl::OkStatus();
}

WlBuffer::State::~State() {
  if (copy) munmap(copy, copy_size);
}

absl::StatusOr<WlBuffer> WlBuffer::CreateDmabufForTesting(Display& display, const Buffer& buffer,
                                                          absl::Duration timeout) {
  absl::Status s = CheckImage(buffer);
  if (!s.ok()) return s;
  absl::StatusOr<wl_buffer*> wl = CreateDmabuf(display, buffer, /*check_dmabuf=*/false, timeout);
  if (!wl.ok()) return wl.status();
  return WlBuffer(*wl, BufferPath::kDmabuf);
}

WlBuffer::WlBuffer(wl_buffer* buffer, BufferPath path,
                   std::unique_ptr<State> state)
    : buffer_(buffer),
      path_(path),
      state_(state ? std::move(state) : std::make_unique<State>()) {
  wl_buffer_add_listener(buffer_, &kBufferListener, &state_->busy);
}

WlBuffer::WlBuffer(WlBuffer&& other) noexcept
    : buffer_(std::exchange(other.buffer_, nullptr)),
      path_(other.path_),
      state_(std::move(other.state_)) {}

WlBuffer& WlBuffer::operator=(WlBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    buffer_ = std::exchange(other.buffer_, nullptr);
    path_ = other.path_;
    state_ = std::move(other.state_);
  }
  return *this;
}

WlBuffer::~WlBuffer() { Reset(); }

void WlBuffer::Reset() {
  if (buffer_) wl_buffer_destroy(buffer_);
  buffer_ = nullptr;
}

}  // namespace halloc::wayland
