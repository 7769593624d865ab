// A KMS compositor for halloc buffers: one display (connector, CRTC, primary
// and overlay planes) of a DRM device, frames imported zero-copy with PRIME
// and shown with atomic commits, one page flip per vblank event; where the
// device has a writeback connector, the composed output is captured into a
// buffer.
//
//   ASSIGN_OR_RETURN(KmsDisplay display, KmsDisplay::Open("vkms"));
//   ASSIGN_OR_RETURN(Framebuffer fb, display.Import(frame));  // a halloc::Buffer
//   RETURN_IF_ERROR(display.Present({frame, fb, display.FullScreen()}));
//
// Everything KMS needs comes from `buffer.layout()` (DRM fourcc, size,
// modifier, each plane's offset and stride) and `buffer.fd()`. Present waits
// for the producer's fence (Buffer::ExportSyncFile(kRead)) before it commits.
//
// Errors: NOT_FOUND (no such device, no connected connector, no plane),
// UNIMPLEMENTED (no atomic modesetting), INVALID_ARGUMENT (a layout KMS
// cannot take, a format the plane does not take, a buffer smaller than its
// layout, a rectangle outside the screen or the framebuffer, a scaling the
// plane cannot do), FAILED_PRECONDITION (not a
// dma-buf, no overlay plane or writeback connector for what was asked),
// DEADLINE_EXCEEDED (no flip event or fence in time), the ioctl's errno
// otherwise (PERMISSION_DENIED: not DRM master, or a view whose allow-list
// does not name the device).
//
// Thread-compatible: one thread drives a display. Framebuffers keep the
// device open, so they may outlive the display they came from.
#ifndef HALLOC_CLIENTS_COMPOSITOR_KMS_H_
#define HALLOC_CLIENTS_COMPOSITOR_KMS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::compositor {

// An open DRM device node, shared by a display and its framebuffers.
class DrmDevice;

struct Rect {
  int32_t x = 0;
  int32_t y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
};

// A KMS framebuffer (drmModeAddFB2WithModifiers) and the GEM handle it was
// made from; removed on destruction, and the handle given back. (PRIME
// gives one handle per dma-buf per device: two Framebuffers of one buffer
// share it, counted, and it is closed with the last of them.)
class Framebuffer {
 public:
  Framebuffer() = default;
  Framebuffer(Framebuffer&& other) noexcept;
  Framebuffer& operator=(Framebuffer&& other) noexcept;
  ~Framebuffer();

  uint32_t id() const { return id_; }
  uint32_t width() const { return width_; }
  uint32_t height() const { return height_; }
  uint32_t format() const { return format_; }
  // The hallocd buffer KmsDisplay::Import made it from (0: a dumb buffer's).
  uint64_t buffer_id() const { return buffer_id_; }

 private:
  friend class KmsDisplay;
  void Reset();
  std::shared_ptr<DrmDevice> device_;
  uint32_t id_ = 0;
  uint32_t width_ = 0, height_ = 0, format_ = 0;
  uint64_t buffer_id_ = 0;
  std::vector<uint32_t> handles_;  // distinct GEM handles to give back
};

// A driver-allocated buffer (DRM_IOCTL_MODE_CREATE_DUMB), mapped, with its
// framebuffer: the floor a halloc import is measured against.
struct DumbFramebuffer {
  DumbFramebuffer() = default;
  DumbFramebuffer(DumbFramebuffer&&) noexcept;
  DumbFramebuffer& operator=(DumbFramebuffer&&) noexcept;
  ~DumbFramebuffer();
  Framebuffer fb;
  void* data = nullptr;
  size_t size = 0;
  uint32_t stride = 0;
};

// One plane's content for a Present: a halloc frame, its framebuffer from
// Import(buffer), where on the screen it goes (`dst`) and which part of the
// framebuffer (`src`; empty: all of it), scaled from src to dst where the
// plane can scale. vkms cannot: there src must be dst's size (a crop, e.g.
// part of a camera frame as a picture-in-picture).
struct PlaneFrame {
  const halloc::Buffer& buffer;
  const Framebuffer& fb;
  Rect dst;
  Rect src = {};
};

// The buffer a writeback connector writes the composed output into, and the
// framebuffer Import made of it.
struct WritebackFrame {
  const halloc::Buffer& buffer;
  const Framebuffer& fb;
};

// The same for a framebuffer KMS already knows is ready (PresentFramebuffers).
struct PlaneFramebuffer {
  const Framebuffer& fb;
  Rect dst;
  Rect src = {};
};

struct DisplayOptions {
  // The mode: 0x0 picks the connector's preferred mode.
  uint32_t width = 0;
  uint32_t height = 0;
  // How long Present waits for a fence or a flip event.
  absl::Duration timeout = absl::Seconds(5);
};

class KmsDisplay {
 public:
  // Opens the first /dev/dri/card* whose driver is `driver` (e.g. "vkms"),
  // with universal planes, atomic and writeback connectors, and picks its
  // first connected connector, a CRTC for it, the CRTC's primary plane and
  // first overlay plane, and a writeback connector if there is one.
  static absl::StatusOr<KmsDisplay> Open(absl::string_view driver,
                                         const DisplayOptions& options = {});
  KmsDisplay(KmsDisplay&&) noexcept;
  KmsDisplay& operator=(KmsDisplay&&) noexcept;
  // Turns the display off (planes, CRTC) if it was on.
  ~KmsDisplay();

  uint32_t width() const;
  uint32_t height() const;
  Rect FullScreen() const { return {0, 0, width(), height()}; }
  bool has_overlay() const;
  bool has_writeback() const;
  // Formats the plane takes (DRM fourccs).
  const std::vector<uint32_t>& primary_formats() const;
  const std::vector<uint32_t>& overlay_formats() const;

  // PRIME-imports a halloc frame (every plane of its layout) and makes it a
  // framebuffer.
  absl::StatusOr<Framebuffer> Import(const halloc::Buffer& buffer);
  // A driver-allocated XRGB8888 buffer and framebuffer.
  absl::StatusOr<DumbFramebuffer> CreateDumb(uint32_t width, uint32_t height);

  // Waits for each frame's producer (its sync_file), then shows `primary`
  // (and `overlay` on the overlay plane, if given) with one atomic commit and
  // waits for its flip event. With `writeback`, the composed output is also
  // written into that buffer, once whatever still reads or writes it (its
  // implicit fences: a device reading the last capture) is done, and
  // Present returns once the writeback fence has signalled. The first
  // Present sets the mode. Each framebuffer must be the one Import made of
  // the buffer given with it (else INVALID_ARGUMENT: the fence waited for
  // would not be that of the memory shown or written).
  absl::Status Present(const PlaneFrame& primary, const PlaneFrame* overlay = nullptr,
                       const WritebackFrame* writeback = nullptr);
  // The same commit and flip without fences: for framebuffers KMS already
  // knows are ready (dumb buffers the CPU filled, a driver's own buffers).
  absl::Status PresentFramebuffers(const PlaneFramebuffer& primary,
                                   const PlaneFramebuffer* overlay = nullptr,
                                   const Framebuffer* writeback = nullptr);

  // Page flips completed (flip events received) since Open.
  uint64_t flips() const;

  struct State;

 private:
  explicit KmsDisplay(std::unique_ptr<State> state);
  // OK unless this display was moved from, or opened by this process's
  // parent before a fork (DrmDevice::Owned).
  absl::Status Usable() const;
  // OK when `fb` (the `name` one: "primary", "overlay", "writeback") is
  // not empty and was made on this display's device.
  absl::Status Ours(const Framebuffer& fb, const char* name) const;
  std::unique_ptr<State> state_;
};

// "XR24" for DRM_FORMAT_XRGB8888.
std::string FourccName(uint32_t fourcc);

// Whether `buffer`'s layout can be a KMS framebuffer at all: a dma-buf with
// an image layout (format, width, height, 1-4 planes) that fits in it.
absl::Status CheckScanoutLayout(const halloc::Buffer& buffer);

}  // namespace halloc::compositor

#endif  // HALLOC_CLIENTS_COMPOSITOR_KMS_H_
