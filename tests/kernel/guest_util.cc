#include "tests/kernel/guest_util.h"

#include <errno.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <xf86drm.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace halloc_test {

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    reset();
    addr_ = other.addr_;
    len_ = other.len_;
    other.addr_ = MAP_FAILED;
  }
  return *this;
}

void Mapping::reset() {
  if (addr_ != MAP_FAILED) munmap(addr_, len_);
  addr_ = MAP_FAILED;
}

Mapping Map(int fd, size_t len, int prot, int flags, off_t offset) {
  void* p = mmap(nullptr, len, prot, flags, fd, offset);
  return Mapping(p, len);
}

int Ioctl(int fd, unsigned long request, void* arg) {
  int ret;
  do {
    ret = ioctl(fd, request, arg);
  } while (ret < 0 && (errno == EINTR || errno == EAGAIN) &&
           request != DMA_BUF_IOCTL_SYNC);
  return ret < 0 ? -errno : ret;
}

int HeapAlloc(int heap_fd, uint64_t len, uint32_t fd_flags,
              uint64_t heap_flags) {
  dma_heap_allocation_data data = {};
  data.len = len;
  data.fd_flags = fd_flags;
  data.heap_flags = heap_flags;
  int ret = Ioctl(heap_fd, DMA_HEAP_IOCTL_ALLOC, &data);
  return ret < 0 ? ret : static_cast<int>(data.fd);
}

int Sync(int dmabuf_fd, uint64_t flags) {
  dma_buf_sync sync = {};
  sync.flags = flags;
  return Ioctl(dmabuf_fd, DMA_BUF_IOCTL_SYNC, &sync);
}

int MakeView(int ctl_fd, int source_fd, const ViewSpec& spec) {
  halloc_view_data data = {};
  data.source_fd = source_fd;
  data.fd_flags = spec.fd_flags;
  data.cpu_access = spec.cpu;
  data.flags = spec.restrict_attach ? HALLOC_VIEW_RESTRICT_ATTACH : 0;
  data.num_drivers = static_cast<uint32_t>(spec.drivers.size());
  if (spec.drivers.size() > HALLOC_MAX_DRIVERS ||
      spec.name.size() >= sizeof(data.name))
    return -EINVAL;
  memcpy(data.name, spec.name.c_str(), spec.name.size());
  for (size_t i = 0; i < spec.drivers.size(); ++i) {
    if (spec.drivers[i].size() >= HALLOC_NAME_LEN) return -EINVAL;
    memcpy(data.drivers[i], spec.drivers[i].c_str(), spec.drivers[i].size());
  }
  int ret = Ioctl(ctl_fd, HALLOC_IOCTL_VIEW, &data);
  return ret < 0 ? ret : static_cast<int>(data.fd);
}

int Info(int ctl_fd, int dmabuf_fd, halloc_buffer_info* info) {
  *info = {};
  info->fd = dmabuf_fd;
  return Ioctl(ctl_fd, HALLOC_IOCTL_INFO, info);
}

int Revoke(int ctl_fd, int fd, uint64_t view_id, uint32_t flags) {
  halloc_revoke_data data = {};
  data.fd = fd;
  data.flags = flags;
  data.view_id = view_id;
  return Ioctl(ctl_fd, HALLOC_IOCTL_REVOKE, &data);
}

int DeleteModule(const std::string& name) {
  if (syscall(SYS_delete_module, name.c_str(), O_NONBLOCK) == 0) return 0;
  return -errno;
}

int LoadModule(const std::string& path, const std::string& params) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return -errno;
  if (syscall(SYS_finit_module, fd.get(), params.c_str(), 0) == 0) return 0;
  return -errno;
}

bool ModuleLoaded(const std::string& name) {
  struct stat st;
  return stat(("/sys/module/" + name + "/initstate").c_str(), &st) == 0;
}

GemHandle::~GemHandle() {
  if (handle_) {
    drm_gem_close close_args = {};
    close_args.handle = handle_;
    drmIoctl(drm_fd_, DRM_IOCTL_GEM_CLOSE, &close_args);
  }
}

int64_t Import(int drm_fd, int dmabuf_fd) {
  uint32_t handle = 0;
  if (drmPrimeFDToHandle(drm_fd, dmabuf_fd, &handle) != 0) return -errno;
  return handle;
}

UniqueFd OpenVgem() {
  for (int i = 0; i < 16; ++i) {
    std::string path = "/dev/dri/card" + std::to_string(i);
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) continue;
    drmVersionPtr v = drmGetVersion(fd.get());
    bool is_vgem = v && std::string(v->name, v->name_len) == "vgem";
    drmFreeVersion(v);
    if (is_vgem) return fd;
  }
  if (!Env("HALLOC_KO").empty()) {
    ADD_FAILURE() << "no vgem DRM device, though tools/kernel-test.sh loads vgem";
  }
  return UniqueFd();
}

int64_t CreateDumb(int drm_fd, uint32_t width, uint32_t height, uint32_t bpp) {
  drm_mode_create_dumb create = {};
  create.width = width;
  create.height = height;
  create.bpp = bpp;
  if (drmIoctl(drm_fd, DRM_IOCTL_MODE_CREATE_DUMB, &create) != 0) return -errno;
  return create.handle;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

long long ProcField(const std::string& file, const std::string& field) {
  const std::string text = "\n" + ReadFile(file);
  const size_t at = text.find("\n" + field + (file == "/proc/meminfo" ? ":" : " "));
  if (at == std::string::npos) return -1;
  return std::atoll(text.c_str() + at + field.size() + 2);
}

bool WriteFile(const std::string& path, const std::string& value) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return write(fd.get(), value.data(), value.size()) ==
         static_cast<ssize_t>(value.size());
}

std::string ModuleParamText(const std::string& name) {
  std::string v = ReadFile("/sys/module/halloc_heap/parameters/" + name);
  while (!v.empty() && v.back() == '\n') v.pop_back();
  return v;
}

long ModuleParam(const std::string& name) {
  std::string v = ModuleParamText(name);
  char* end = nullptr;
  long n = strtol(v.c_str(), &end, 10);
  return v.empty() || *end ? -1 : n;
}

ScopedParam::ScopedParam(const std::string& name, const std::string& value)
    : path_("/sys/module/halloc_heap/parameters/" + name),
      old_(ReadFile(path_)),
      ok_(WriteFile(path_, value)) {}

ScopedParam::~ScopedParam() {
  if (ok_) WriteFile(path_, old_);
}

bool BufferListed(uint64_t id) {
  const std::string prefix = std::to_string(id) + " ";
  std::istringstream in(ReadFile("/sys/kernel/debug/halloc/buffers"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

long PoolPages() {
  std::string s = ReadFile("/sys/kernel/debug/halloc/buffers");
  size_t at = s.find("pool: ");
  return at == std::string::npos ? -1 : strtol(s.c_str() + at + 6, nullptr, 10);
}

NodesToGroup::NodesToGroup(gid_t gid, const std::vector<std::string>& except) {
  for (const char* node : {HALLOC_CONTROL_PATH, HALLOC_HEAP_SYSTEM_PATH, HALLOC_HEAP_CONTIG_PATH,
                           HALLOC_HEAP_PROTECTED_PATH, HALLOC_HEAP_DEFERRED_PATH}) {
    struct stat st;
    if (std::find(except.begin(), except.end(), node) != except.end()) continue;
    if (stat(node, &st) != 0) continue;  // a heap this module lacks
    was_.push_back({node, st.st_uid, st.st_gid, static_cast<mode_t>(st.st_mode & 07777)});
    ok_ = ok_ && chown(node, 0, gid) == 0 && chmod(node, 0660) == 0;
  }
}

NodesToGroup::~NodesToGroup() {
  for (const Was& w : was_) {
    if (chown(w.node.c_str(), w.uid, w.gid) != 0 || chmod(w.node.c_str(), w.mode) != 0) {
      ADD_FAILURE() << "cannot give " << w.node << " back";
    }
  }
}

std::string Env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

bool AllBytesAre(const uint8_t* p, size_t len, uint8_t v) {
  return std::all_of(p, p + len, [v](uint8_t b) { return b == v; });
}

long long NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

}  // namespace halloc_test
