// How many references a dma-buf's file has: the fds to it in every process
// (dups and fds passed on share one file and count once each), its
// mappings, importers' holds (a driver that imported it, e.g. DRM PRIME or
// V4L2 DMABUF), and fds in flight in a socket. The kernel shows the count
// in /proc/<pid>/fdinfo/<fd> ("count:", less the read's own reference;
// dma_buf_show_fdinfo). For hallocd: when its own fd is the only one left,
// nobody else can map or attach the memory any more (a dma-buf cannot be
// reopened for I/O through /proc). Blind spot: an O_PATH open of
// /proc/<pid>/fd/N holds the dma-buf's dentry, not its file, and keeps
// the dma-buf (and its pages) alive unseen here; the halloc module counts
// those too (HALLOC_IOCTL_INFO path_refs).
#ifndef HALLOC_SERVICE_BACKEND_DMABUF_REFS_H_
#define HALLOC_SERVICE_BACKEND_DMABUF_REFS_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace halloc {

// The "count:" field of fdinfo text, if it has one.
std::optional<uint64_t> FdinfoCount(absl::string_view fdinfo);

// The references to the file of this process's dma-buf fd `fd`.
// FAILED_PRECONDITION when its fdinfo has no count (not a dma-buf, or a
// kernel that does not show it); the errno's status when unreadable.
absl::StatusOr<uint64_t> DmaBufReferences(int fd);

// For Backend::IsLastReference: 1 when `fd` is the only reference to its
// dma-buf's file, 0 when there are more, -errno when it cannot tell.
int DmaBufIsLastReference(int fd);

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_DMABUF_REFS_H_
