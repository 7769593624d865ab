// FakeCompositor: a libwayland-server compositor in a thread of the test,
// offering only zwp_linux_dmabuf_v1 (version 3) with the format+modifier
// pairs it is given, and recording every buffer a client creates through
// it. For tests of the linux-dmabuf path where no compositor offers it
// (weston 10's pixman renderer does not) and no dma-buf exists (the host).
#ifndef HALLOC_CLIENTS_WAYLAND_FAKE_COMPOSITOR_H_
#define HALLOC_CLIENTS_WAYLAND_FAKE_COMPOSITOR_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace halloc::wayland::testing {

struct DmabufPlane {
  uint32_t index = 0;
  uint32_t offset = 0;
  uint32_t stride = 0;
  uint64_t modifier = 0;
  ino_t inode = 0;  // of the fd the compositor received
};

struct DmabufRequest {
  int32_t width = 0;
  int32_t height = 0;
  uint32_t format = 0;
  std::vector<DmabufPlane> planes;
  bool created = false;  // else the compositor sent `failed`
};

class FakeCompositor {
 public:
  // Offers `formats` (fourcc, modifier); answers `failed` to a create of
  // `refuse_format`; takes `answer_delay` to answer each create (a slow
  // compositor: its one thread sleeps).
  static absl::StatusOr<std::unique_ptr<FakeCompositor>> Start(
      std::vector<std::pair<uint32_t, uint64_t>> formats, uint32_t refuse_format = 0,
      absl::Duration answer_delay = absl::ZeroDuration());
  ~FakeCompositor();

  const std::string& socket() const { return socket_; }
  std::vector<DmabufRequest> requests() const;
  // The wl_buffers it created that the client has not destroyed.
  int live_buffers() const;

  struct State;

 private:
  FakeCompositor() = default;
  std::string dir_;
  std::string socket_;
  std::unique_ptr<State> state_;
};

}  // namespace halloc::wayland::testing

#endif  // HALLOC_CLIENTS_WAYLAND_FAKE_COMPOSITOR_H_
