#include "service/util/fake_fuse_testing.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace halloc::testing {
namespace {

constexpr uint64_t kDir = 2, kFile = 3;

fuse_attr Attr(uint64_t node) {
  fuse_attr a{};
  a.ino = node;
  a.mode = node == kFile ? (S_IFREG | 0644) : (S_IFDIR | 0755);
  a.nlink = node == kFile ? 1 : 2;
  a.uid = 0;
  a.gid = 0;
  a.blksize = 4096;
  return a;
}

// One reply: the header and `body` (none for an error).
void Reply(int dev, uint64_t unique, int error, const void* body = nullptr, size_t size = 0) {
  fuse_out_header out{};
  out.len = static_cast<uint32_t>(sizeof(out) + size);
  out.error = -error;
  out.unique = unique;
  iovec iov[2] = {{&out, sizeof(out)}, {const_cast<void*>(body), size}};
  (void)::writev(dev, iov, size > 0 ? 2 : 1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeFuse>> FakeFuse::Mount(const std::string& at) {
  if (::geteuid() != 0) return absl::FailedPreconditionError("mounting FUSE needs root");
  UniqueFd dev(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
  if (!dev) {
    return absl::FailedPreconditionError(
        absl::StrCat("open(/dev/fuse): ", std::strerror(errno)));
  }
  const std::string options = absl::StrCat("fd=", dev.get(),
                                           ",rootmode=40000,user_id=0,group_id=0,allow_other");
  if (::mount("halloc-fake", at.c_str(), "fuse.halloc-fake", MS_NOSUID | MS_NODEV,
              options.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("mount(fuse): ", std::strerror(errno)));
  }
  std::unique_ptr<FakeFuse> fs(new FakeFuse(at, std::move(dev)));
  fs->server_ = std::thread([raw = fs.get()] { raw->Serve(); });
  return fs;
}

FakeFuse::~FakeFuse() {
  // The connection ends with the mount: the server's read fails (ENODEV).
  ::umount2(at_.c_str(), MNT_DETACH);
  if (server_.joinable()) server_.join();
}

void FakeFuse::Serve() {
  std::vector<char> buf(FUSE_MIN_READ_BUFFER + (128 << 10));
  for (;;) {
    const ssize_t n = ::read(dev_.get(), buf.data(), buf.size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOENT)) continue;
    if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return;  // ENODEV: unmounted
    fuse_in_header in;
    std::memcpy(&in, buf.data(), sizeof(in));
    const char* arg = buf.data() + sizeof(in);
    switch (in.opcode) {
      case FUSE_INIT: {
        fuse_init_in init{};
        std::memcpy(&init, arg, std::min(sizeof(init), static_cast<size_t>(n) - sizeof(in)));
        fuse_init_out out{};
        out.major = FUSE_KERNEL_VERSION;
        out.minor = init.minor < FUSE_KERNEL_MINOR_VERSION ? init.minor : FUSE_KERNEL_MINOR_VERSION;
        out.max_write = 4096;
        out.time_gran = 1;
        Reply(dev_.get(), in.unique, 0, &out, sizeof(out));
        break;
      }
      case FUSE_LOOKUP: {
        const std::string name(arg);
        const uint64_t node =
            in.nodeid == FUSE_ROOT_ID && name == "d" ? kDir
            : in.nodeid == FUSE_ROOT_ID && name == "f" ? kFile
                                                       : 0;
        if (node == 0) {
          Reply(dev_.get(), in.unique, ENOENT);
          break;
        }
        fuse_entry_out out{};
        out.nodeid = node;
        out.attr = Attr(node);
        Reply(dev_.get(), in.unique, 0, &out, sizeof(out));
        break;
      }
      case FUSE_GETATTR: {
        fuse_attr_out out{};
        out.attr = Attr(in.nodeid);
        Reply(dev_.get(), in.unique, 0, &out, sizeof(out));
        break;
      }
      case FUSE_STATFS: {
        fuse_statfs_out out{};
        out.st.bsize = 4096;
        out.st.namelen = 255;
        Reply(dev_.get(), in.unique, 0, &out, sizeof(out));
        break;
      }
      case FUSE_OPEN:
      case FUSE_OPENDIR: {
        fuse_open_out out{};
        Reply(dev_.get(), in.unique, 0, &out, sizeof(out));
        break;
      }
      case FUSE_READ:
        Reply(dev_.get(), in.unique, 0);  // empty
        break;
      case FUSE_FORGET:
      case FUSE_BATCH_FORGET:
        break;  // no reply
      case FUSE_RELEASE:
      case FUSE_RELEASEDIR:
      case FUSE_FLUSH:
        Reply(dev_.get(), in.unique, 0);
        break;
      default:
        Reply(dev_.get(), in.unique, ENOSYS);
    }
  }
}

}  // namespace halloc::testing
