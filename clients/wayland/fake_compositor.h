// FakeCompositor: a libwayland-server compositor in a thread of the test,
// offering zwp_linux_dmabuf_v1 (version 3) with the format+modifier pairs
// it is given, and recording every buffer a client creates through it; and,
// when given wl_shm formats, libwayland-server's own wl_shm. For tests of
// the linux-dmabuf path where no compositor offers it (weston 10's pixman
// renderer does not) and no dma-buf exists (the host), and of wl_shm
// formats weston's pixman renderer lacks (NV12).
//
// A create whose planes are out of bounds as weston 10 and wlroots judge
// them (libweston/linux-dmabuf.c: offset + stride, and offset + stride *
// height, within 32 bits; where lseek gives the fd's size, a stride of at
// least 1, each plane's offset + stride and plane 0's offset + stride *
// height within it) is answered as they answer it: the protocol error
// out_of_bounds, which ends the client's connection.
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
  ino_t inode = 0;       // of the fd the compositor received
  int64_t fd_size = -1;  // lseek(fd, 0, SEEK_END): -1 where it fails
};

struct DmabufRequest {
  int32_t width = 0;
  int32_t height = 0;
  uint32_t format = 0;
  std::vector<DmabufPlane> planes;
  bool created = false;  // else the compositor sent `failed` or an error
};

class FakeCompositor {
 public:
  struct Options {
    // Offered through linux-dmabuf: (fourcc, modifier).
    std::vector<std::pair<uint32_t, uint64_t>> formats = {};
    // A linux-dmabuf create of this format is answered `failed`.
    uint32_t refuse_format = 0;
    // How long each linux-dmabuf create takes to answer (a slow
    // compositor: its one thread sleeps).
    absl::Duration answer_delay = absl::ZeroDuration();
    // wl_shm formats beyond ARGB8888 and XRGB8888 (which wl_shm always
    // offers); wl_shm is offered only when this is not empty.
    std::vector<uint32_t> shm_formats = {};
  };
  static absl::StatusOr<std::unique_ptr<FakeCompositor>> Start(Options options);
  ~FakeCompositor();

  const std::string& socket() const { return socket_; }
  // Every linux-dmabuf create, in order.
  std::vector<DmabufRequest> requests() const;
  // The linux-dmabuf wl_buffers it created that the client has not
  // destroyed.
  int live_buffers() const;
  // The wl_shm pools clients created.
  int shm_pools() const;

  struct State;

 private:
  FakeCompositor() = default;
  std::string dir_;
  std::string socket_;
  std::unique_ptr<State> state_;
};

}  // namespace halloc::wayland::testing

#endif  // HALLOC_CLIENTS_WAYLAND_FAKE_COMPOSITOR_H_
