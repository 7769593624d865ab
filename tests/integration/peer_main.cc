// A separate client process for the integration tests (gRPC must not be
// used in a forked child of a gRPC process, so tests exec this instead).
//
//   peer CONTROL BROKER shell UID          drop to UID, then run commands from
//                                          stdin (see Shell below)
//   peer CONTROL BROKER import-describe TOKEN
//                                          import, print its BufferInfo
//                                          (binary protobuf) on stdout
//   peer CONTROL BROKER crash              allocate 4 buffers, then abort()
//   peer CONTROL BROKER identity UID TOKEN BUFFER_ID
//                                          drop to UID, check the daemon sees
//                                          UID and that TOKEN/BUFFER_ID, which
//                                          belong to another uid, give nothing
// Exit code 0 means every check held; otherwise the number of the failed one.
#include <dirent.h>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xf86drm.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "grpcpp/grpcpp.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "kernel/uapi/halloc_heap.h"

namespace {

using ::absl::StatusCode;

int Crash(const halloc::ConnectOptions& opts) {
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  if (!c->Allocate(halloc::BlobDescriptor(1 << 20), 4).ok()) return 2;
  abort();
}

int Identity(const halloc::ConnectOptions& opts, uid_t uid,
             const std::string& token, uint64_t id) {
  if (setgid(uid) != 0 || setuid(uid) != 0) return 10;
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  if (c->uid() != uid) return 2;  // kernel-verified
  // A grant made for another uid is useless here, even with its token.
  if (c->Import(token).status().code() != StatusCode::kPermissionDenied) return 3;
  // Another client's buffer is invisible and untouchable.
  if (c->Describe(id).status().code() != StatusCode::kNotFound) return 4;
  if (c->Release(id).code() != StatusCode::kNotFound) return 5;
  if (c->Share(id, uid).status().code() != StatusCode::kNotFound) return 6;
  if (c->List(true).status().code() != StatusCode::kPermissionDenied) return 7;
  absl::StatusOr<halloc::Buffer> own = c->Allocate(halloc::BlobDescriptor(4096));
  if (!own.ok() || own->info().owner_uid() != uid) return 8;
  return 0;
}

// As `uid`, on a gRPC connection of its own, presents the session token
// `token` (another process's) to List: the call's status code.
int StolenToken(const halloc::ConnectOptions& opts, uid_t uid, const std::string& token) {
  if (uid != getuid() && (setgid(uid) != 0 || setuid(uid) != 0)) return 100;
  auto stub = halloc::v1::Allocator::NewStub(
      grpc::CreateChannel("unix:" + opts.control_socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata(std::string(halloc::kSessionMetadataKey), token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  halloc::v1::ListResponse resp;
  return stub->List(&ctx, halloc::v1::ListRequest(), &resp).error_code();
}

// Imports TOKEN and prints the BufferInfo as this process sees it.
int ImportDescribe(const halloc::ConnectOptions& opts, const std::string& token) {
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  absl::StatusOr<halloc::Buffer> b = c->Import(token);
  if (!b.ok()) return 2;
  absl::StatusOr<halloc::v1::BufferInfo> info = c->Describe(b->id());
  if (!info.ok()) return 3;
  std::string out;
  info->SerializeToString(&out);
  fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

// PRIME import of `fd` into the first DRM card whose driver is `driver`
// (the handle closed again): 0 or an errno (ENODEV: no such device).
int ImportInto(const std::string& driver, int fd) {
  DIR* dir = opendir("/dev/dri");
  if (dir == nullptr) return ENODEV;
  int result = ENODEV;
  while (dirent* e = readdir(dir)) {
    if (std::string(e->d_name).rfind("card", 0) != 0) continue;
    const int card = open(absl::StrCat("/dev/dri/", e->d_name).c_str(), O_RDWR | O_CLOEXEC);
    if (card < 0) continue;
    drmVersionPtr v = drmGetVersion(card);
    const bool match = v != nullptr && driver == v->name;
    drmFreeVersion(v);
    if (match) {
      uint32_t handle = 0;
      result = drmPrimeFDToHandle(card, fd, &handle) == 0 ? 0 : errno;
      if (result == 0) {
        drm_gem_close gem_close = {};
        gem_close.handle = handle;
        drmIoctl(card, DRM_IOCTL_GEM_CLOSE, &gem_close);
      }
    }
    close(card);
    if (match) break;
  }
  closedir(dir);
  return result;
}

// Line-oriented driver for policy tests: one reply line per command line.
//   alloc SIZE USAGES            → ok ID | err CODE
//   share ID name:N|uid:N CPU    → ok TOKEN GRANT_ID | err CODE  (CPU: none,
//                                  read, rw, same)
//   import TOKEN                 → ok ID CPU | err CODE
//   write ID BYTE / read ID      → ok [BYTE] | err CODE
//   mmap-rw ID / mprotect-rw ID / fork-mmap-rw ID / reopen-rw ID
//                                → ok (a writable mapping was made) | err ERRNO
//   release ID / revoke GRANT_ID → ok | err CODE
//   nofile                       → ok: RLIMIT_NOFILE 3, room for no new fd
//   sync-write ID                → ok | err ERRNO  (DMA_BUF_IOCTL_SYNC write)
//   device ID DRIVER             → ok | err ERRNO  (PRIME import into the
//                                  DRM device of that driver, e.g. vgem)
//   kinfo ID                     → ok KERNEL_ID CPU | err ERRNO (the halloc
//                                  module's HALLOC_IOCTL_INFO of the fd)
int Shell(const halloc::ConnectOptions& opts, uid_t uid) {
  if (uid != 0 && (setgid(uid) != 0 || setuid(uid) != 0)) return 10;
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::map<uint64_t, halloc::Buffer> held;
  auto err = [](const absl::Status& s) {
    return absl::StrCat("err ", absl::StatusCodeToString(s.code()));
  };
  auto find = [&](const std::string& arg) -> halloc::Buffer* {
    uint64_t id;
    if (!absl::SimpleAtoi(arg, &id)) return nullptr;
    auto it = held.find(id);
    return it == held.end() ? nullptr : &it->second;
  };
  char line[512];
  while (fgets(line, sizeof(line), stdin) != nullptr) {
    std::vector<std::string> a = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ');
    std::string out = "err BAD_COMMAND";
    const std::string& cmd = a[0];
    if (cmd == "alloc" && a.size() == 3) {
      uint64_t size;
      absl::StatusOr<uint64_t> usage = halloc::usage::Parse(a[2]);
      if (absl::SimpleAtoi(a[1], &size) && usage.ok()) {
        absl::StatusOr<halloc::Buffer> b = c->Allocate(halloc::BlobDescriptor(size, *usage));
        if (b.ok()) {
          out = absl::StrCat("ok ", b->id());
          held.emplace(b->id(), *std::move(b));
        } else {
          out = err(b.status());
        }
      }
    } else if (cmd == "share" && a.size() == 4) {
      uint64_t id, peer_uid;
      const halloc::v1::CpuAccess cpu =
          a[3] == "none" ? halloc::v1::CPU_ACCESS_NONE
          : a[3] == "read" ? halloc::v1::CPU_ACCESS_READ
          : a[3] == "rw" ? halloc::v1::CPU_ACCESS_READ_WRITE
                         : halloc::v1::CPU_ACCESS_UNSPECIFIED;
      absl::StatusOr<halloc::v1::Grant> g = absl::InvalidArgumentError("bad peer");
      if (!absl::SimpleAtoi(a[1], &id)) {
      } else if (absl::StartsWith(a[2], "name:")) {
        g = c->ShareWithClient(id, a[2].substr(5), cpu);
      } else if (absl::StartsWith(a[2], "uid:") && absl::SimpleAtoi(a[2].substr(4), &peer_uid)) {
        g = c->Share(id, static_cast<uid_t>(peer_uid), cpu);
      }
      out = g.ok() ? absl::StrCat("ok ", g->token(), " ", g->id()) : err(g.status());
    } else if (cmd == "import" && a.size() == 2) {
      absl::StatusOr<halloc::Buffer> b = c->Import(a[1]);
      if (b.ok()) {
        out = absl::StrCat("ok ", b->id(), " ",
                           halloc::v1::CpuAccess_Name(b->info().cpu_access()));
        held.insert_or_assign(b->id(), *std::move(b));
      } else {
        out = err(b.status());
      }
    } else if ((cmd == "write" && a.size() == 3) || (cmd == "read" && a.size() == 2)) {
      halloc::Buffer* b = find(a[1]);
      int byte = 0;
      if (b != nullptr && (cmd == "read" || absl::SimpleAtoi(a[2], &byte))) {
        absl::StatusOr<halloc::Mapping> m =
            b->Map(cmd == "read" ? halloc::Access::kRead : halloc::Access::kReadWrite);
        if (!m.ok()) {
          out = err(m.status());
        } else if (cmd == "write") {
          memset(m->data(), byte, m->size());
          out = "ok";
        } else {
          out = absl::StrCat("ok ", static_cast<int>(m->as<uint8_t>()[m->size() - 1]));
        }
      }
    } else if ((cmd == "mmap-rw" || cmd == "mprotect-rw" || cmd == "fork-mmap-rw" ||
                cmd == "reopen-rw") &&
               a.size() == 2) {
      halloc::Buffer* b = find(a[1]);
      if (b != nullptr) {
        const int fd = b->fd();
        const size_t size = b->size();
        auto attempt = [fd, size, &cmd]() -> int {
          void* p = MAP_FAILED;
          if (cmd == "reopen-rw") {  // a new, writable file description
            const int w = open(absl::StrCat("/proc/self/fd/", fd).c_str(), O_RDWR | O_CLOEXEC);
            if (w < 0) return errno;
            close(w);
            return 0;
          }
          if (cmd == "mprotect-rw") {
            p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) return errno;
            const int r = mprotect(p, size, PROT_READ | PROT_WRITE);
            const int e = errno;
            munmap(p, size);
            return r == 0 ? 0 : e;
          }
          p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
          if (p == MAP_FAILED) return errno;
          munmap(p, size);
          return 0;
        };
        int e;
        if (cmd == "fork-mmap-rw") {  // the fd passed on to another process
          pid_t pid = fork();
          if (pid == 0) _exit(attempt());
          int status = 0;
          waitpid(pid, &status, 0);
          e = WIFEXITED(status) ? WEXITSTATUS(status) : EIO;
        } else {
          e = attempt();
        }
        out = e == 0 ? "ok" : absl::StrCat("err ", strerrorname_np(e));
      }
    } else if (cmd == "release" && a.size() == 2) {
      uint64_t id;
      if (absl::SimpleAtoi(a[1], &id)) {
        absl::Status s = c->Release(id);
        out = s.ok() ? "ok" : err(s);
        held.erase(id);
      }
    } else if (cmd == "revoke" && a.size() == 2) {
      uint64_t id;
      if (absl::SimpleAtoi(a[1], &id)) {
        absl::Status s = c->Revoke(id);
        out = s.ok() ? "ok" : err(s);
      }
    } else if (cmd == "nofile" && a.size() == 1) {
      // No room for any new fd: the next fds hallocd sends are cut. The
      // limit is 3, so only stdin, stdout and stderr (which stay open) are
      // below it; not "the lowest free fd", since a library thread closing
      // one of its fds later would reopen a slot below that. Not 0 either:
      // poll() refuses more fds than the limit (EINVAL).
      rlimit lim{};
      getrlimit(RLIMIT_NOFILE, &lim);
      lim.rlim_cur = 3;
      out = setrlimit(RLIMIT_NOFILE, &lim) == 0 ? "ok" : "err setrlimit";
    } else if ((cmd == "sync-write" && a.size() == 2) || (cmd == "kinfo" && a.size() == 2) ||
               (cmd == "device" && a.size() == 3)) {
      halloc::Buffer* b = find(a[1]);
      if (b != nullptr) {
        int e = 0;
        if (cmd == "sync-write") {
          dma_buf_sync sync{DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE};
          e = ioctl(b->fd(), DMA_BUF_IOCTL_SYNC, &sync) == 0 ? 0 : errno;
          if (e == 0) {
            sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE;
            ioctl(b->fd(), DMA_BUF_IOCTL_SYNC, &sync);
          }
        } else if (cmd == "device") {
          e = ImportInto(a[2], b->fd());
        } else {
          halloc_buffer_info info = {};
          info.fd = b->fd();
          const int ctl = open(HALLOC_CONTROL_PATH, O_RDWR | O_CLOEXEC);
          e = ctl < 0 ? errno : ioctl(ctl, HALLOC_IOCTL_INFO, &info) == 0 ? 0 : errno;
          if (ctl >= 0) close(ctl);
          if (e == 0) out = absl::StrCat("ok ", info.id, " ", info.cpu_access);
        }
        if (e != 0) out = absl::StrCat("err ", strerrorname_np(e));
        else if (cmd != "kinfo") out = "ok";
      }
    } else if (cmd == "quit") {
      return 0;
    }
    printf("%s\n", out.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return 64;
  halloc::ConnectOptions opts;
  opts.control_socket = argv[1];
  opts.broker_socket = argv[2];
  const std::string cmd = argv[3];
  if (cmd == "crash") return Crash(opts);
  uint32_t shell_uid;
  if (cmd == "shell" && argc == 5 && absl::SimpleAtoi(argv[4], &shell_uid)) {
    return Shell(opts, shell_uid);
  }
  if (cmd == "import-describe" && argc == 5) return ImportDescribe(opts, argv[4]);
  if (cmd == "stolen-token" && argc == 6 && absl::SimpleAtoi(argv[4], &shell_uid)) {
    return StolenToken(opts, shell_uid, argv[5]);
  }
  uint32_t uid;
  uint64_t id;
  if (cmd == "identity" && argc == 7 && absl::SimpleAtoi(argv[4], &uid) &&
      absl::SimpleAtoi(argv[6], &id)) {
    return Identity(opts, uid, argv[5], id);
  }
  return 64;
}
