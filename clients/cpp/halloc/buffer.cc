// Buffer and Mapping (client.h): what a client does with a buffer's fd.
#include <linux/dma-buf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/client.h"

namespace halloc {
namespace {

constexpr long kDmaBufMagic = 0x444d4142;  // DMA_BUF_MAGIC, linux/magic.h

int SyncIoctl(int fd, uint64_t flags) {
  dma_buf_sync sync{flags};
  return RetryIoctl(fd, DMA_BUF_IOCTL_SYNC, &sync);
}

}  // namespace

// --- Mapping ---------------------------------------------------------------

Mapping::Mapping(Mapping&& other) noexcept { *this = std::move(other); }

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Reset();
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(sync_fd_, other.sync_fd_);
    std::swap(sync_flags_, other.sync_flags_);
    std::swap(in_access_, other.in_access_);
    std::swap(access_, other.access_);
  }
  return *this;
}

Mapping::~Mapping() { Reset(); }

void Mapping::Reset() { Unmap().IgnoreError(); }

absl::Status Mapping::BeginAccess() {
  if (data_ == nullptr) return absl::FailedPreconditionError("BeginAccess: not mapped");
  if (in_access_) return absl::FailedPreconditionError("BeginAccess: CPU access is begun already");
  if (sync_fd_ && SyncIoctl(sync_fd_.get(), DMA_BUF_SYNC_START | sync_flags_) != 0) {
    return ErrnoStatus(errno, "DMA_BUF_IOCTL_SYNC(START)");
  }
  in_access_ = true;
  return absl::OkStatus();
}

absl::Status Mapping::EndAccess() {
  if (data_ == nullptr) return absl::FailedPreconditionError("EndAccess: not mapped");
  if (!in_access_) return absl::FailedPreconditionError("EndAccess: CPU access is ended already");
  in_access_ = false;
  if (sync_fd_ && SyncIoctl(sync_fd_.get(), DMA_BUF_SYNC_END | sync_flags_) != 0) {
    return ErrnoStatus(errno, "DMA_BUF_IOCTL_SYNC(END)");
  }
  return absl::OkStatus();
}

absl::Status Mapping::Unmap() {
  if (data_ == nullptr) return absl::OkStatus();
  const absl::Status ended = in_access_ ? EndAccess() : absl::OkStatus();
  ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
  sync_fd_ = SharedFd();
  return ended;
}

absl::StatusOr<uint8_t*> Mapping::Rows(uint64_t offset, uint64_t stride, uint64_t row_bytes,
                                       uint64_t rows) const {
  auto out_of_range = [&] {
    return absl::OutOfRangeError(absl::StrCat(rows, " rows of ", row_bytes, " bytes at offset ",
                                              offset, ", stride ", stride, ", do not fit the ",
                                              size_, "-byte mapping"));
  };
  // Rows apart, each at least a row long (and never 0: a degenerate layout).
  if (rows > 1 && (stride == 0 || stride < row_bytes)) return out_of_range();
  if (rows == 0 || row_bytes == 0) {
    if (offset > size_) return out_of_range();
    return static_cast<uint8_t*>(data_) + offset;
  }
  // The last row ends at offset + (rows - 1) * stride + row_bytes: each
  // step compared against what is left, never summed first.
  if (offset > size_ || row_bytes > size_ - offset) return out_of_range();
  if (rows > 1 && (size_ - offset - row_bytes) / stride < rows - 1) return out_of_range();
  return static_cast<uint8_t*>(data_) + offset;
}

// --- Buffer ----------------------------------------------------------------

Buffer::Buffer(v1::BufferInfo info, UniqueFd fd)
    : info_(std::move(info)), fd_(std::move(fd)) {
  switch (info_.fd_kind()) {
    case v1::FD_KIND_MEMFD:
      dmabuf_ = false;
      break;
    case v1::FD_KIND_DMA_BUF:
      dmabuf_ = true;
      break;
    default: {
      struct statfs fs;
      dmabuf_ = fd_ && ::fstatfs(fd_.get(), &fs) == 0 && fs.f_type == kDmaBufMagic;
    }
  }
}

absl::StatusOr<Mapping> Buffer::Map(Access access) const {
  if (!fd_) return absl::FailedPreconditionError("buffer has no fd");
  ASSIGN_OR_RETURN(const MapFlags flags, ToMapFlags(access));
  if (!is_dmabuf()) {
    // A memfd maps past its end, and the first touch there is SIGBUS: a
    // description larger than the fd (a buggy or foreign daemon's) is
    // refused here. (A dma-buf's mmap itself refuses what it lacks.)
    struct stat st {};
    if (::fstat(fd_.get(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) < size()) {
      return absl::DataLossError(absl::StrCat("buffer ", id(), " is ", size(),
                                              " bytes by its description but its fd has ",
                                              st.st_size));
    }
  }
  void* p = ::mmap(nullptr, size(), flags.prot, MAP_SHARED, fd_.get(), 0);
  if (p == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat("mmap buffer ", id(), " for ",
                                           CpuAccessName(access)));
  }
  Mapping m;
  m.data_ = p;
  m.size_ = size();
  if (is_dmabuf()) {
    m.sync_flags_ = flags.sync;
    if (SyncIoctl(fd_.get(), DMA_BUF_SYNC_START | m.sync_flags_) != 0) {
      const int err = errno;
      ::munmap(p, size());
      m.data_ = nullptr;
      return ErrnoStatus(err, "DMA_BUF_IOCTL_SYNC(START)");
    }
    m.sync_fd_ = fd_;
  }
  m.in_access_ = true;
  m.access_ = access;
  return m;
}

namespace {

// What a fence ioctl's failure means to the caller.
absl::Status FenceError(int err, absl::string_view what) {
  if (err == ENOTTY) {
    return absl::UnimplementedError(absl::StrCat(
        what, ": this kernel has no such ioctl (Linux 6.0+)"));
  }
  return ErrnoStatus(err, what);
}

// The DMA_BUF_SYNC_* direction of a fence ioctl on `buffer` for `access`,
// or why there is none (no fd, kNone, a memfd).
absl::StatusOr<uint32_t> FenceFlags(const Buffer& buffer, Access access) {
  if (buffer.fd() < 0) return absl::FailedPreconditionError("buffer has no fd");
  ASSIGN_OR_RETURN(const MapFlags flags, ToMapFlags(access));
  if (!buffer.is_dmabuf()) {
    return absl::FailedPreconditionError(
        "buffer is a memfd: only dma-bufs carry fences");
  }
  return static_cast<uint32_t>(flags.sync);
}

}  // namespace

absl::StatusOr<UniqueFd> Buffer::ExportSyncFile(Access access) const {
  dma_buf_export_sync_file arg{};
  ASSIGN_OR_RETURN(arg.flags, FenceFlags(*this, access));
  arg.fd = -1;
  if (::ioctl(fd_.get(), DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &arg) != 0) {
    return FenceError(errno, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE");
  }
  return UniqueFd(arg.fd);
}

absl::Status Buffer::ImportSyncFile(const UniqueFd& sync_file, Access access) const {
  dma_buf_import_sync_file arg{};
  ASSIGN_OR_RETURN(arg.flags, FenceFlags(*this, access));
  arg.fd = sync_file.get();
  if (::ioctl(fd_.get(), DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &arg) != 0) {
    return FenceError(errno, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE");
  }
  return absl::OkStatus();
}

v1::BufferDescriptor BlobDescriptor(uint64_t size, uint64_t usage,
                                    absl::string_view name) {
  v1::BufferDescriptor d;
  d.set_name(std::string(name));
  d.set_usage(usage);
  d.set_size(size);
  return d;
}

v1::BufferDescriptor ImageDescriptor(uint32_t width, uint32_t height,
                                     uint32_t fourcc, uint64_t usage,
                                     absl::string_view name) {
  v1::BufferDescriptor d;
  d.set_name(std::string(name));
  d.set_usage(usage);
  d.mutable_image()->set_width(width);
  d.mutable_image()->set_height(height);
  d.mutable_image()->set_format(fourcc);
  return d;
}

}  // namespace halloc
