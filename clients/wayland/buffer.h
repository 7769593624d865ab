// WlBuffer: a halloc::Buffer as a wl_buffer, for any Wayland compositor.
//
//   ASSIGN_OR_RETURN(WlBuffer wl, WlBuffer::Create(*display, frame));
//   wl_surface_attach(surface, wl.get(), 0, 0);
//
// Everything comes from the buffer's layout (format, width, height,
// modifier, each plane's offset and stride) and its fd:
//  * zwp_linux_dmabuf_v1 when the buffer is a dma-buf and the compositor
//    takes its format with its modifier: the compositor imports the same
//    pages (zero copy, devices may scan them out);
//  * wl_shm otherwise: the buffer's fd is the pool the compositor mmaps
//    (a memfd, or a dma-buf where the compositor offers no linux-dmabuf).
//    The fd must be writable: libwayland-server maps every pool read-write
//    (a read-only fd would cost the connection). So a read-only buffer
//    (a frame shared read-only) takes the kShmCopy path: the WlBuffer owns
//    a memfd of the same size, and Refresh copies the frame into it
//    (Presenter does, at each Show). Zero copy on wl_shm needs a
//    read-write import.
//    DRM_FORMAT_XRGB8888/ARGB8888 are wl_shm's formats 1/0; every other
//    wl_shm format is the DRM fourcc itself. wl_shm gives one offset and
//    one stride: a multi-planar layout it cannot describe (CheckShmLayout)
//    is refused rather than shown in wrong colours.
// The wl_buffer does not own the halloc::Buffer: the compositor holds its
// own reference to the memory (the fd travelled to it), so the wl_buffer
// stays valid after the Buffer is gone, and the memory with it.
//
// Status codes: INVALID_ARGUMENT — the buffer is not an image (a blob has
// no layout), or its layout cannot be described to the compositor, or
// does not lie within the buffer (a plane or the layout past the fd's end
// as the kernel tells it, or, on wl_shm, past the pool of the buffer's
// size or that size past the fd's; a stride of 0, a plane past 32 bits):
// refused before anything is sent, since a compositor ends the connection
// for some (linux-dmabuf's out_of_bounds) and reads past the end for
// others (NV12's chroma rows after a wl_shm pool of the luma rows);
// FAILED_PRECONDITION — the compositor lacks the global the chosen path
// needs, or does not take the format (+modifier), or kShm was asked to
// map a read-only fd, or wl_shm cannot describe the planes; INTERNAL — the
// compositor refused the buffer or closed the connection.
#ifndef HALLOC_CLIENTS_WAYLAND_BUFFER_H_
#define HALLOC_CLIENTS_WAYLAND_BUFFER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"
#include "clients/wayland/display.h"

struct wl_buffer;

namespace halloc::wayland {

enum class BufferPath {
  kAuto,     // linux-dmabuf where it works (see above), else wl_shm, or
             // kShmCopy for a read-only fd
  kShm,      // wl_shm only, the buffer's own fd (never a read-only one)
  kShmCopy,  // wl_shm, a copy (Refresh before each attach)
  kDmabuf,   // linux-dmabuf only
};

// "wl_shm", "wl_shm copy", "linux-dmabuf" ("auto" for kAuto).
const char* PathName(BufferPath path);

// "XR24" for DRM_FORMAT_XRGB8888, as drm_fourcc.h spells them.
std::string FourccName(uint32_t fourcc);

// The wl_shm format value for a DRM fourcc.
uint32_t ShmFormatFor(uint32_t drm_fourcc);

// OK when wl_shm's one offset and stride describe every plane of image
// layout `l` (of buffer `buffer_id`, for the message) as the compositor
// will read them: each further plane right after the one before, as many
// rows as the image's height over that plane's vertical subsampling
// (rounded down, as weston's renderers count them), each row plane 0's
// stride over its horizontal subsampling, times its bytes per sample over
// plane 0's. FAILED_PRECONDITION naming the plane otherwise (an Android
// YV12 whose chroma rows are padded to 16 bytes, an odd height of a
// three-plane format): the compositor would show wrong colours.
absl::Status CheckShmLayout(uint64_t buffer_id, const v1::BufferLayout& l);

class WlBuffer {
 public:
  static absl::StatusOr<WlBuffer> Create(Display& display,
                                         const Buffer& buffer,
                                         BufferPath path = BufferPath::kAuto);
  // The linux-dmabuf path for any fd, dma-buf or not: for tests of the
  // request against a fake compositor where no dma-buf exists (the host).
  // `timeout`: how long to wait for the compositor's answer (Create waits
  // 5 s).
  static absl::StatusOr<WlBuffer> CreateDmabufForTesting(Display& display, const Buffer& buffer,
                                                         absl::Duration timeout = absl::Seconds(5));
  WlBuffer(WlBuffer&& other) noexcept;
  WlBuffer& operator=(WlBuffer&& other) noexcept;
  ~WlBuffer();

  wl_buffer* get() const { return buffer_; }
  // The path taken: kShm, kShmCopy or kDmabuf.
  BufferPath path() const { return path_; }
  // kShmCopy: copies `source` (the buffer this was created from) into the
  // wl_buffer's memory; call before each attach. FAILED_PRECONDITION while
  // busy (the compositor may be reading the copy: writing it now could show
  // a torn frame); Presenter then takes another copy. Other paths: nothing
  // to do.
  absl::Status Refresh(const Buffer& source);
  // Between MarkBusy (when attached and committed) and the compositor's
  // wl_buffer.release: the compositor may still read the memory.
  bool busy() const { return state_->busy; }
  void MarkBusy() { state_->busy = true; }

 private:
  struct State {
    ~State();
    bool busy = false;
    UniqueFd copy_fd;  // kShmCopy: the copy's memfd, mapped at `copy`
    void* copy = nullptr;
    size_t copy_size = 0;
  };
  WlBuffer(wl_buffer* buffer, BufferPath path,
           std::unique_ptr<State> state = nullptr);
  static absl::StatusOr<WlBuffer> CreateCopy(Display& display,
                                             const Buffer& buffer);
  void Reset();

  wl_buffer* buffer_ = nullptr;
  BufferPath path_ = BufferPath::kShm;
  // On the heap: the release listener points at it across moves.
  std::unique_ptr<State> state_;
};

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_BUFFER_H_
