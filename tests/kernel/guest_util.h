// Helpers for the in-guest tests of halloc_heap.ko (see tools/kernel-test.sh).
//
// Everything returns -errno on failure instead of logging, so that tests can
// assert on the exact errno.
#ifndef HALLOC_TESTS_KERNEL_GUEST_UTIL_H_
#define HALLOC_TESTS_KERNEL_GUEST_UTIL_H_

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernel/uapi/halloc_heap.h"

namespace halloc_test {

// Owns one file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  [[nodiscard]] int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Owns one mmap()ed range.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t len) : addr_(addr), len_(len) {}
  Mapping(Mapping&& other) noexcept : addr_(other.addr_), len_(other.len_) {
    other.addr_ = MAP_FAILED;
  }
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  bool valid() const { return addr_ != MAP_FAILED; }
  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return len_; }
  void reset();

 private:
  void* addr_ = MAP_FAILED;
  size_t len_ = 0;
};

// mmap(fd) with the given protection and flags; invalid on failure with
// errno set.
Mapping Map(int fd, size_t len, int prot = PROT_READ | PROT_WRITE,
            int flags = MAP_SHARED, off_t offset = 0);

// ioctl() returning 0 or -errno.
int Ioctl(int fd, unsigned long request, void* arg);

// Allocates from a dma-heap node: the dma-buf fd, or -errno.
int HeapAlloc(int heap_fd, uint64_t len,
              uint32_t fd_flags = O_RDWR | O_CLOEXEC, uint64_t heap_flags = 0);

// DMA_BUF_IOCTL_SYNC: 0 or -errno.
int Sync(int dmabuf_fd, uint64_t flags);

// What a view should carry.
struct ViewSpec {
  uint32_t cpu = HALLOC_CPU_READ_WRITE;
  bool restrict_attach = false;
  std::vector<std::string> drivers;
  std::string name;
  uint32_t fd_flags = O_CLOEXEC;
};

// HALLOC_IOCTL_VIEW on the control node: the view's fd, or -errno.
int MakeView(int ctl_fd, int source_fd, const ViewSpec& spec);

// HALLOC_IOCTL_INFO: 0 or -errno.
int Info(int ctl_fd, int dmabuf_fd, halloc_buffer_info* info);

// HALLOC_IOCTL_REVOKE of view `view_id` with the authority of `fd`: 0 or
// -errno.
int Revoke(int ctl_fd, int fd, uint64_t view_id, uint32_t flags = 0);

// CLOCK_MONOTONIC in milliseconds (for tests that wait, and say how long).
long long NowMs();

// Module load/unload through the syscalls: 0 or -errno.
int DeleteModule(const std::string& name);
int LoadModule(const std::string& path, const std::string& params);
bool ModuleLoaded(const std::string& name);

// The vgem DRM node (card*), or an invalid fd if vgem is not loaded. Under
// tools/kernel-test.sh (HALLOC_KO set), which loads vgem, a missing vgem
// also fails the running test: the vgem halves callers skip without it
// must not pass unseen there.
UniqueFd OpenVgem();

// A GEM handle on a DRM fd, closed on destruction.
class GemHandle {
 public:
  GemHandle(int drm_fd, uint32_t handle) : drm_fd_(drm_fd), handle_(handle) {}
  GemHandle(const GemHandle&) = delete;
  GemHandle& operator=(const GemHandle&) = delete;
  ~GemHandle();
  uint32_t get() const { return handle_; }

 private:
  int drm_fd_;
  uint32_t handle_;
};

// drmPrimeFDToHandle: the handle, or -errno.
int64_t Import(int drm_fd, int dmabuf_fd);

// DRM_IOCTL_MODE_CREATE_DUMB: the GEM handle (close it, e.g. with a
// GemHandle), or -errno.
int64_t CreateDumb(int drm_fd, uint32_t width, uint32_t height, uint32_t bpp);

// Contents of a file, or "" if it cannot be read.
// Whether the module lists buffer `id` (debugfs halloc/buffers): its
// pages are still allocated.
bool BufferListed(uint64_t id);
std::string ReadFile(const std::string& path);
// The number on line `field` of /proc/meminfo (kB) or /proc/vmstat (pages,
// counts), or -1.
long long ProcField(const std::string& file, const std::string& field);

// Writes `value` to an existing file (sysfs, procfs); true on success.
bool WriteFile(const std::string& path, const std::string& value);

// /sys/module/halloc_heap/parameters/<name> as text ("" if absent).
std::string ModuleParamText(const std::string& name);

// A numeric module parameter (-1 if absent or not a number).
long ModuleParam(const std::string& name);

// Sets a halloc_heap module parameter for the lifetime of the object.
class ScopedParam {
 public:
  ScopedParam(const std::string& name, const std::string& value);
  ~ScopedParam();
  ScopedParam(const ScopedParam&) = delete;
  ScopedParam& operator=(const ScopedParam&) = delete;
  bool ok() const { return ok_; }

 private:
  std::string path_;
  std::string old_;
  bool ok_;
};

// "pool: N pages" from /sys/kernel/debug/halloc/buffers (the pages the
// halloc-system page pool holds), or -1.
long PoolPages();

// The module's device nodes given to group `gid`, mode 0660, as the hallocd
// package's udev rule gives them to group hallocd
// (service/systemd/75-halloc.rules), but for `except`; owners and modes come
// back when this goes.
class NodesToGroup {
 public:
  explicit NodesToGroup(gid_t gid, const std::vector<std::string>& except = {});
  ~NodesToGroup();
  NodesToGroup(const NodesToGroup&) = delete;
  NodesToGroup& operator=(const NodesToGroup&) = delete;
  bool ok() const { return ok_; }

 private:
  struct Was {
    std::string node;
    uid_t uid;
    gid_t gid;
    mode_t mode;
  };
  std::vector<Was> was_;
  bool ok_ = true;
};

// Environment variable or "".
std::string Env(const char* name);

// True if every byte of [p, p+len) equals v.
bool AllBytesAre(const uint8_t* p, size_t len, uint8_t v);

// Runs fn in a forked child; returns the child's wait status. This process
// has threads (gRPC's, the in-process daemon's): fn may make only
// async-signal-safe calls (no allocation) and should end in _exit.
template <typename Fn>
int RunInChild(Fn fn);

}  // namespace halloc_test

#include <sys/wait.h>

namespace halloc_test {

template <typename Fn>
int RunInChild(Fn fn) {
  pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return status;
}

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_GUEST_UTIL_H_
