#include "clients/demo/pipeline.h"

#include <drm_fourcc.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/camera/camera.h"
#include "clients/camera/pattern.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/wayland/presenter.h"

namespace halloc::demo {
namespace {

// The viewer's longest wait for the camera's next message.
constexpr absl::Duration kViewerIdle = absl::Seconds(60);

absl::Status Send(int fd, const std::string& msg) {
  while (send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) < 0) {
    if (errno != EINTR) return ErrnoStatus(errno, "send on the demo channel");
  }
  return absl::OkStatus();
}

// The next message; DEADLINE_EXCEEDED if none within `timeout`,
// UNAVAILABLE if the peer closed the channel.
absl::StatusOr<std::string> Receive(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    pollfd p = {fd, POLLIN, 0};
    const int ms = static_cast<int>(
        absl::ToInt64Milliseconds(std::max(deadline - absl::Now(), absl::ZeroDuration())));
    const int n = poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "poll on the demo channel");
    if (n == 0) return absl::DeadlineExceededError("no message from the peer in time");
    char buf[1024];
    const ssize_t got = recv(fd, buf, sizeof(buf), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return ErrnoStatus(errno, "recv on the demo channel");
    if (got == 0) return absl::UnavailableError("the peer closed the channel");
    return std::string(buf, static_cast<size_t>(got));
  }
}

ino_t InodeOf(int fd) {
  struct stat st = {};
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// Whether `fd` refuses a shared writable mapping (a read-only import must).
bool RefusesWrite(int fd, size_t size) {
  void* w = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (w == MAP_FAILED) return true;
  munmap(w, size);
  return false;
}

// The viewer's part of one "frame SEQ INDEX INODE TOKEN" message.
struct Viewer {
  Client client;
  std::unique_ptr<wayland::Presenter> presenter;
  std::map<uint32_t, Buffer> held;  // by camera buffer index
  std::optional<uint32_t> on_screen;  // a zero-copy frame the compositor may read
  int shown = 0, same_memory = 0, write_refused = 0;

  absl::Status ShowFrame(const std::vector<std::string>& f, int channel) {
    uint32_t index = 0;
    uint64_t inode = 0;
    if (f.size() != 5 || !absl::SimpleAtoi(f[2], &index) || !absl::SimpleAtoi(f[3], &inode)) {
      return absl::InvalidArgumentError("bad frame message");
    }
    ASSIGN_OR_RETURN(Buffer frame, client.Import(f[4]));
    same_memory += InodeOf(frame.fd()) == inode;
    write_refused += RefusesWrite(frame.fd(), frame.size());
    const uint64_t id = frame.id();
    RETURN_IF_ERROR(presenter->Show(frame));
    ++shown;
    held.insert_or_assign(index, std::move(frame));
    // The camera may reuse what the compositor no longer reads: a frame
    // Show copied (a read-only memfd: kShmCopy) at once, a zero-copy one
    // once the next frame replaced it and the compositor let go of it.
    if (on_screen) {
      RETURN_IF_ERROR(presenter->WaitReleased(held.at(*on_screen).id()));
      RETURN_IF_ERROR(Send(channel, absl::StrCat("done ", *on_screen)));
      on_screen.reset();
    }
    if (!presenter->busy(id)) return Send(channel, absl::StrCat("done ", index));
    on_screen = index;
    return absl::OkStatus();
  }
};

absl::Status ServeViewer(Viewer& v, int channel) {
  while (true) {
    ASSIGN_OR_RETURN(std::string msg, Receive(channel, kViewerIdle));
    std::vector<std::string> f = absl::StrSplit(msg, ' ');
    if (f[0] == "frame") {
      RETURN_IF_ERROR(v.ShowFrame(f, channel));
    } else if (f[0] == "end") {
      RETURN_IF_ERROR(v.presenter->WaitShown());
      RETURN_IF_ERROR(
          Send(channel, absl::StrCat("shown ", v.shown, " ", v.same_memory, " ", v.write_refused,
                                     " ", wayland::PathName(v.presenter->last_path()))));
    } else if (f[0] == "quit") {
      return absl::OkStatus();
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown message '", msg, "'"));
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ViewerProcess>> ViewerProcess::Spawn(
    const std::string& binary, const ConnectOptions& hallocd, const std::string& wayland_display) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoStatus(errno, "socketpair");
  }
  std::unique_ptr<ViewerProcess> v(new ViewerProcess());
  v->channel_ = UniqueFd(sv[0]);
  UniqueFd theirs(sv[1]);
  SpawnOptions o;
  o.argv = {binary,
            "--role=viewer",
            absl::StrCat("--channel_fd=", theirs.get()),
            "--control_socket=" + hallocd.control_socket,
            "--broker_socket=" + hallocd.broker_socket,
            "--display=" + wayland_display};
  o.keep_fds = {theirs.get()};
  ASSIGN_OR_RETURN(v->process_, Subprocess::Spawn(o));
  return v;
}

absl::Status ViewerProcess::Finish(absl::Duration timeout) {
  if (!process_.running()) return absl::FailedPreconditionError("the viewer was reaped");
  (void)Send(channel_.get(), "quit");  // it may be gone already
  const std::optional<int> status = process_.Wait(timeout);
  if (!status) return absl::DeadlineExceededError("the viewer did not quit in time");
  if (WIFEXITED(*status) && WEXITSTATUS(*status) == 0) return absl::OkStatus();
  return absl::InternalError(
      WIFEXITED(*status) ? absl::StrCat("the viewer exited with status ", WEXITSTATUS(*status))
                         : absl::StrCat("the viewer died of signal ", WTERMSIG(*status)));
}

absl::StatusOr<PipelineResult> RunCamera(Client& client, ViewerProcess& viewer,
                                         const PipelineOptions& options) {
  camera::CameraOptions co;
  co.width = options.width;
  co.height = options.height;
  co.buffer_count = options.buffers;
  co.fps = options.fps;
  co.usage = usage::kComposerOverlay;
  co.name = "demo-camera-frame";
  ASSIGN_OR_RETURN(std::unique_ptr<camera::Camera> cam, camera::Camera::OpenSynthetic(client, co));
  PipelineResult result;
  const camera::StreamFormat& sf = cam->format();
  result.camera = absl::StrFormat("%s: XRGB8888 %ux%u, stride %u, %u buffers (%s)", cam->Describe(),
                                  sf.width, sf.height, sf.bytesperline, cam->buffers().size(),
                                  cam->buffers()[0].info().backend());
  const int ch = viewer.channel();
  // Every wait on the viewer: its message, or its error as ours.
  auto next = [&](absl::Duration timeout) -> absl::StatusOr<std::vector<std::string>> {
    ASSIGN_OR_RETURN(std::string msg, Receive(ch, timeout));
    if (absl::StartsWith(msg, "error ")) {
      return absl::InternalError(absl::StrCat("viewer: ", msg.substr(6)));
    }
    return std::vector<std::string>(absl::StrSplit(msg, absl::MaxSplits(' ', 4)));
  };
  ASSIGN_OR_RETURN(std::vector<std::string> ready, next(options.timeout));
  uint32_t viewer_uid = 0;
  if (ready.size() != 2 || ready[0] != "ready" || !absl::SimpleAtoi(ready[1], &viewer_uid)) {
    return absl::InternalError("the viewer did not say it is ready");
  }
  uint32_t out = 0;  // frames the viewer holds
  auto take_back = [&](const std::vector<std::string>& m) -> absl::Status {
    uint32_t index = 0;
    if (m.size() != 2 || m[0] != "done" || !absl::SimpleAtoi(m[1], &index)) {
      return absl::InternalError(absl::StrCat("unexpected viewer message '", m[0], "'"));
    }
    --out;
    return cam->Requeue(index);
  };
  RETURN_IF_ERROR(cam->Start());
  const absl::Time start = absl::Now();
  for (int i = 0; i < options.frames; ++i) {
    // Take back what the viewer is done with; wait when it holds them all.
    while (true) {
      absl::StatusOr<std::vector<std::string>> m =
          next(out == cam->buffers().size() ? options.timeout : absl::ZeroDuration());
      if (absl::IsDeadlineExceeded(m.status()) && out < cam->buffers().size()) break;
      if (!m.ok()) return m.status();
      RETURN_IF_ERROR(take_back(*m));
    }
    ASSIGN_OR_RETURN(camera::Frame frame, cam->Next());
    ++out;
    ASSIGN_OR_RETURN(v1::Grant grant, cam->ShareWithUid(frame, viewer_uid, v1::CPU_ACCESS_READ));
    result.last_sequence = frame.sequence;
    RETURN_IF_ERROR(Send(ch, absl::StrCat("frame ", frame.sequence, " ", frame.index, " ",
                                          InodeOf(frame.buffer->fd()), " ", grant.token())));
  }
  RETURN_IF_ERROR(Send(ch, "end"));
  while (true) {
    ASSIGN_OR_RETURN(std::vector<std::string> m, next(options.timeout));
    if (m[0] != "shown") {
      RETURN_IF_ERROR(take_back(m));
      continue;
    }
    result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    if (m.size() != 5 || !absl::SimpleAtoi(m[1], &result.frames) ||
        !absl::SimpleAtoi(m[2], &result.same_memory) ||
        !absl::SimpleAtoi(m[3], &result.write_refused)) {
      return absl::InternalError("bad 'shown' message from the viewer");
    }
    result.path = m[4];
    break;
  }
  result.frames_per_second = result.seconds > 0 ? result.frames / result.seconds : 0;
  RETURN_IF_ERROR(cam->Stop());
  return result;
}

absl::Status RunViewer(int channel, const ConnectOptions& hallocd,
                       const std::string& wayland_display) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Client client, Client::Connect(hallocd));
    wayland::PresenterOptions po;
    po.display = wayland_display;
    po.window.title = "halloc demo viewer";
    po.window.fullscreen = true;
    ASSIGN_OR_RETURN(std::unique_ptr<wayland::Presenter> presenter, wayland::Presenter::Create(po));
    Viewer v{std::move(client), std::move(presenter)};
    RETURN_IF_ERROR(Send(channel, absl::StrCat("ready ", v.client.uid())));
    return ServeViewer(v, channel);
  }();
  if (!s.ok()) (void)Send(channel, absl::StrCat("error ", s.ToString()));
  return s;
}

ScreenCheck CheckScreen(const png::Image& shot, uint32_t width, uint32_t height,
                        uint32_t sequence) {
  ScreenCheck c;
  if (shot.width != width || shot.height != height) {
    c.bar_mismatches = 1;
    c.first_mismatch = absl::StrFormat("screenshot is %ux%u, frames %ux%u", shot.width, shot.height,
                                       width, height);
    c.counter = absl::FailedPreconditionError("wrong screenshot size");
    return c;
  }
  // Every 4th column of three rows below the counter box, away from bar
  // edges (a bar is width/8 pixels wide; edges move kScrollPixels a frame).
  for (uint32_t y : {height / 2, 3 * height / 4, height - 1}) {
    for (uint32_t x = 2; x + 2 < width; x += 4) {
      const int bar = camera::BarAt(x, width, sequence);
      if (camera::BarAt(x - 2, width, sequence) != bar ||
          camera::BarAt(x + 2, width, sequence) != bar) {
        continue;
      }
      const camera::Rgb rgb = camera::BarColour(bar);
      const uint32_t want = 0xff000000u | rgb.r << 16 | rgb.g << 8 | rgb.b;
      ++c.bar_probes;
      if (shot.at(x, y) != want) {
        if (c.bar_mismatches++ == 0) {
          c.first_mismatch =
              absl::StrFormat("pixel (%u, %u) #%08x, bar %d #%08x", x, y, shot.at(x, y), bar, want);
        }
      }
    }
  }
  // The counter box, read back as the camera library reads its frames.
  v1::BufferLayout layout;
  layout.set_format(DRM_FORMAT_XRGB8888);
  layout.set_width(width);
  layout.set_height(height);
  layout.set_size(uint64_t{width} * height * 4);
  v1::PlaneLayout* plane = layout.add_planes();
  plane->set_stride(uint64_t{width} * 4);
  plane->set_size(layout.size());
  c.counter = camera::ReadCounter(layout, reinterpret_cast<const uint8_t*>(shot.pixels.data()),
                                  shot.pixels.size() * 4);
  return c;
}

}  // namespace halloc::demo
