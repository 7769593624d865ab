// halloc_demo: a producer process and a consumer process share buffers
// through hallocd. Run by `tools/run demo`, which starts hallocd first.
//
// The producer allocates frames (NV12 1080p, like a camera) and a blob,
// writes a pattern into each, shares each read-only with the consumer's uid
// and sends it the grant tokens over a private pipe. The consumer (a
// separate process, exec'ed) imports each buffer, maps it, checks that it is
// the very same memory (same inode, no copy), verifies the pattern, and
// confirms that its read-only fd refuses a writable mapping.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <drm_fourcc.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"

ABSL_FLAG(std::string, control_socket, "", "hallocd gRPC socket");
ABSL_FLAG(std::string, broker_socket, "", "hallocd broker socket");
ABSL_FLAG(int, frames, 3, "NV12 frames to share");
ABSL_FLAG(std::string, role, "producer", "producer or consumer (internal)");
ABSL_FLAG(int, channel_fd, -1, "consumer: fd of the producer's channel (internal)");

namespace {

uint8_t Pattern(uint64_t buffer, size_t i) {
  return static_cast<uint8_t>((i * 31 + buffer * 7) ^ (i >> 12));
}

double Us(absl::Duration d) { return absl::ToDoubleMicroseconds(d); }

// Line-based messages over the producer↔consumer socketpair.
bool SendLine(int fd, const std::string& line) {
  const std::string msg = line + "\n";
  return send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) ==
         static_cast<ssize_t>(msg.size());
}

bool ReadLine(int fd, std::string* line) {
  line->clear();
  char c;
  while (true) {
    ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line->push_back(c);
  }
}

halloc::ConnectOptions Options() {
  halloc::ConnectOptions o;
  o.control_socket = absl::GetFlag(FLAGS_control_socket);
  o.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  return o;
}

int Consumer() {
  const int ch = absl::GetFlag(FLAGS_channel_fd);
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(Options());
  if (!client.ok()) {
    absl::PrintF("consumer: %s\n", client.status().ToString());
    return 1;
  }
  absl::PrintF("[consumer pid %d] session %d, uid %d (as the kernel reports it)\n",
               getpid(), client->session_id(), client->uid());
  SendLine(ch, absl::StrCat("uid ", client->uid()));
  int failures = 0;
  std::string line;
  std::vector<halloc::Buffer> held;
  while (ReadLine(ch, &line) && line != "done") {
    // "grant <token> <buffer id> <producer inode>"
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    uint64_t id = 0, inode = 0;
    if (f.size() != 4 || !absl::SimpleAtoi(f[2], &id) || !absl::SimpleAtoi(f[3], &inode)) {
      absl::PrintF("[consumer] bad message '%s'\n", line);
      return 1;
    }
    const absl::Time t0 = absl::Now();
    absl::StatusOr<halloc::Buffer> buf = client->Import(f[1]);
    const absl::Duration import_time = absl::Now() - t0;
    if (!buf.ok()) {
      absl::PrintF("[consumer] import of buffer %d failed: %s\n", id,
                   buf.status().ToString());
      ++failures;
      continue;
    }
    struct stat st;
    fstat(buf->fd(), &st);
    const bool same = static_cast<uint64_t>(st.st_ino) == inode;
    const absl::Time t1 = absl::Now();
    absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kRead);
    size_t bad = 0;
    if (map.ok()) {
      const uint8_t* p = map->as<uint8_t>();
      for (size_t i = 0; i < map->size(); ++i) bad += p[i] != Pattern(id, i);
    }
    const absl::Duration verify_time = absl::Now() - t1;
    void* w = mmap(nullptr, buf->size(), PROT_READ | PROT_WRITE, MAP_SHARED, buf->fd(), 0);
    const bool write_refused = w == MAP_FAILED;
    const int write_errno = errno;
    if (!write_refused) munmap(w, buf->size());
    const double mbps = map.ok() ? map->size() / absl::ToDoubleSeconds(verify_time) / 1e6 : 0;
    absl::PrintF(
        "[consumer] buffer %d \"%s\": imported in %.0f us (cpu %s); same memory as "
        "producer (inode %d): %s; pattern %s over %d bytes (%.0f MB/s); writable "
        "mapping %s\n",
        id, buf->info().name(), Us(import_time),
        buf->info().cpu_access() == halloc::v1::CPU_ACCESS_READ ? "read-only" : "read-write",
        st.st_ino, same ? "yes" : "NO", map.ok() && bad == 0 ? "verified" : "WRONG",
        buf->size(), mbps,
        write_refused ? absl::StrCat("refused (", strerror(write_errno), ")") : "ALLOWED");
    failures += !same || !map.ok() || bad != 0 || !write_refused;
    held.push_back(*std::move(buf));
  }
  SendLine(ch, absl::StrCat("result ", failures));
  return failures == 0 ? 0 : 1;
}

int Producer(const char* self) {
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(Options());
  if (!client.ok()) {
    absl::PrintF("producer: cannot connect: %s\n", client.status().ToString());
    return 1;
  }
  absl::PrintF("[producer pid %d] session %d, uid %d\n", getpid(),
               client->session_id(), client->uid());

  // The consumer: a separate process, exec'ed, talking over a socketpair.
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
  const pid_t consumer = fork();
  if (consumer == 0) {
    fcntl(sv[1], F_SETFD, 0);  // keep across exec
    const std::string fd_flag = absl::StrCat("--channel_fd=", sv[1]);
    const std::string c = "--control_socket=" + absl::GetFlag(FLAGS_control_socket);
    const std::string b = "--broker_socket=" + absl::GetFlag(FLAGS_broker_socket);
    execl(self, self, "--role=consumer", fd_flag.c_str(), c.c_str(), b.c_str(), nullptr);
    _exit(127);
  }
  close(sv[1]);
  const int ch = sv[0];
  std::string line;
  uint32_t consumer_uid = 0;
  if (!ReadLine(ch, &line) || !absl::SimpleAtoi(line.substr(4), &consumer_uid)) {
    absl::PrintF("[producer] consumer did not start\n");
    return 1;
  }

  std::vector<halloc::v1::BufferDescriptor> descs;
  for (int i = 0; i < absl::GetFlag(FLAGS_frames); ++i) {
    descs.push_back(halloc::ImageDescriptor(
        1920, 1080, DRM_FORMAT_NV12,
        halloc::usage::kCameraOutput | halloc::usage::kCpuWriteOften |
            halloc::usage::kComposerOverlay,
        absl::StrCat("camera-frame-", i)));
  }
  descs.push_back(halloc::BlobDescriptor(8 << 20, halloc::usage::kCpuWriteOften, "blob-8MiB"));

  std::vector<halloc::Buffer> buffers;
  for (const auto& d : descs) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<halloc::Buffer> buf = client->Allocate(d);
    const absl::Duration alloc_time = absl::Now() - t0;
    if (!buf.ok()) {
      absl::PrintF("[producer] allocate failed: %s\n", buf.status().ToString());
      return 1;
    }
    const absl::Time t1 = absl::Now();
    {
      absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
      if (!map.ok()) return 1;
      uint8_t* p = map->as<uint8_t>();
      for (size_t i = 0; i < map->size(); ++i) p[i] = Pattern(buf->id(), i);
    }
    const absl::Duration fill_time = absl::Now() - t1;
    const absl::Time t2 = absl::Now();
    absl::StatusOr<halloc::v1::Grant> grant =
        client->Share(buf->id(), consumer_uid, halloc::v1::CPU_ACCESS_READ);
    const absl::Duration share_time = absl::Now() - t2;
    if (!grant.ok()) {
      absl::PrintF("[producer] share failed: %s\n", grant.status().ToString());
      return 1;
    }
    std::string shape = "blob";
    if (buf->layout().planes_size() > 0) {
      shape = absl::StrFormat("NV12 %dx%d, Y stride %d, UV at offset %d",
                              buf->layout().width(), buf->layout().height(),
                              buf->layout().planes(0).stride(),
                              buf->layout().planes(1).offset());
    }
    absl::PrintF(
        "[producer] buffer %d \"%s\" (%s, %d bytes, backend %s): allocated in %.0f "
        "us, pattern written in %.0f us, shared read-only with uid %d in %.0f us\n",
        buf->id(), buf->info().name(), shape, buf->size(), buf->info().backend(),
        Us(alloc_time), Us(fill_time), consumer_uid, Us(share_time));
    struct stat st;
    fstat(buf->fd(), &st);
    SendLine(ch, absl::StrCat("grant ", grant->token(), " ", buf->id(), " ", st.st_ino));
    buffers.push_back(*std::move(buf));
  }
  SendLine(ch, "done");
  int failures = -1;
  if (ReadLine(ch, &line) && absl::StartsWith(line, "result ")) {
    absl::SimpleAtoi(line.substr(7), &failures);
  }

  absl::StatusOr<halloc::v1::StatsResponse> stats = client->Stats();
  if (stats.ok()) {
    absl::PrintF("[hallocd] %d live buffers, %d bytes, %d sessions, %d grants\n",
                 stats->live_buffers(), stats->live_bytes(), stats->sessions(),
                 stats->grants());
  }
  absl::StatusOr<std::vector<halloc::v1::BufferInfo>> all = client->List(true);
  if (all.ok()) {
    for (const auto& b : *all) {
      std::string holders;
      for (const auto& h : b.holders()) {
        absl::StrAppend(&holders, " pid ", h.pid(), h.owner() ? " (owner)" : " (imported)");
      }
      absl::PrintF("[hallocd] buffer %d held by%s\n", b.id(), holders);
    }
  }
  int status = 0;
  waitpid(consumer, &status, 0);
  std::vector<uint64_t> ids;
  for (const auto& b : buffers) ids.push_back(b.id());
  const absl::Status released = client->Release(ids);
  stats = client->Stats();
  absl::PrintF("[producer] released its %d buffers (%s); consumer exited; hallocd now "
               "holds %d buffers\n",
               ids.size(), released.ok() ? "ok" : released.ToString(),
               stats.ok() ? stats->live_buffers() : -1);
  const bool ok = failures == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                  released.ok() && stats.ok() && stats->live_buffers() == 0;
  absl::PrintF("demo %s\n", ok ? "OK: every buffer reached the consumer intact, zero copies"
                               : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (absl::GetFlag(FLAGS_role) == "consumer") return Consumer();
  return Producer("/proc/self/exe");
}
