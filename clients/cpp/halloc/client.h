// libhalloc: the C++ client of hallocd.
//
//   #include "clients/cpp/halloc/base/status_macros.h"  // ASSIGN_OR_RETURN
//
//   absl::Status Fill() {
//     ASSIGN_OR_RETURN(halloc::Client client, halloc::Client::Connect());
//     ASSIGN_OR_RETURN(halloc::Buffer buf,
//                      client.Allocate(halloc::BlobDescriptor(1 << 20)));
//     ASSIGN_OR_RETURN(halloc::Mapping map, buf.Map(halloc::Access::kReadWrite));
//     memset(map.data(), 0xff, map.size());
//     return client.Release(buf.id());
//   }
//
// (compiled and run as clients/cpp/halloc/example_test.cc)
//
// A Client is one session: it connects to the broker socket (the daemon
// learns who we are from the kernel, and from our answer to its challenge
// which executable we are; then it sends our session token). Allocate,
// Release, Import, Share, Revoke, Describe, SetMetadata and IsSupported
// travel on the broker socket (those after Release where hallocd says it
// serves them: ConnectOptions::broker_fast_path), the reply and the fds in
// one record; the other calls (Stats, List, Dump, ...) are gRPC calls
// carrying the token, on a connection of the Client's own. See
// proto/halloc/v1/broker.proto.
// Closing the Client ends the session: the daemon drops every hold it had
// (fds already in this process stay valid until their Buffer is destroyed).
//
// Thread-safety: a Client may be used from several threads at once; each
// call waits for its own answer only, and at most its timeout. Buffer and
// Mapping are plain move-only values.
//
// fork(): a Client belongs to the process that connected it. In a child
// every call on an inherited Client is FAILED_PRECONDITION (parent and child
// would share its socket and take each other's replies); the child connects
// a Client of its own, whose sockets (broker and control) are its own too.
// Buffers and Mappings, plain fds, stay usable there.
// The parent's Client ends the session when destroyed, whatever children
// hold; a child destroying the Client it inherited ends nothing.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_CLIENT_H_
#define HALLOC_CLIENTS_CPP_HALLOC_CLIENT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/rights.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc {

// What a Map asks for: the daemon's own rights vocabulary (kRead,
// kReadWrite; kNone maps nothing). See clients/cpp/halloc/base/rights.h.
using Access = CpuAccess;

struct ConnectOptions {
  // Empty: $HALLOC_CONTROL_SOCKET / $HALLOC_BROKER_SOCKET; one named alone:
  // the other's file (control.sock, broker.sock) in its directory; neither:
  // <dir>/control.sock and <dir>/broker.sock with dir = ClientSocketDir():
  // $XDG_RUNTIME_DIR/halloc where either socket is there, else /run/halloc
  // (hallocd's defaults; never one socket from each). A set-user-ID or
  // set-group-ID program reads none of these variables (ClientSocketPaths
  // in base/protocol.h).
  std::string control_socket;
  std::string broker_socket;
  // Per-call deadline, and the longest wait to connect: for room in the
  // broker socket's backlog and for the daemon's hello, together.
  absl::Duration timeout = absl::Seconds(10);
  // Allocate, Import, Share, Revoke, Release, Describe, SetMetadata and
  // IsSupported as requests on the broker socket (one record there and
  // back, fds in the reply's record; a Release of more ids than a request
  // holds (64 KiB, some 6 000 to 13 000) goes as a gRPC ReleaseMany stream,
  // all or nothing as one Release; all but Allocate and Release so only
  // where hallocd says it serves them, Welcome.broker_import, broker_share,
  // broker_revoke, broker_metadata and broker_is_supported). false: as gRPC
  // calls, the way a gRPC-only client makes them.
  bool broker_fast_path = true;
};

// A CPU mapping of a buffer. CPU access is bracketed with
// DMA_BUF_IOCTL_SYNC START/END when the buffer is a dma-buf (memfds need no
// bracket): from Map to Unmap, or in brackets of its own (BeginAccess,
// EndAccess). Unmaps on destruction. It shares the Buffer's fd (for the
// bracket), so it may outlive the Buffer it came from.
class Mapping {
 public:
  Mapping() = default;
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  ~Mapping();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  // What the mapping was made for: writing through a kRead mapping is
  // SIGSEGV (its pages are mapped read-only).
  Access access() const { return access_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }

  // The first of `rows` rows of `row_bytes` each, `stride` apart from
  // `offset` (a plane as its layout places it: PlaneLayout's offset and
  // stride), when every byte of them lies in this mapping; OUT_OF_RANGE
  // when not, or when rows overlap (a stride shorter than a row, or 0).
  // A layout is the daemon's word: every consumer that walks rows asks
  // here, no product wrapping, rather than trusting offset + y * stride.
  absl::StatusOr<uint8_t*> Rows(uint64_t offset, uint64_t stride, uint64_t row_bytes,
                                uint64_t rows) const;

  // CPU access again and again on one mapping kept across frames
  // (libcamera's MappedFrameBuffer, gralloc's lock and unlock): Map begins
  // it; EndAccess ends it (a dma-buf's DMA_BUF_SYNC_END: what the CPU
  // wrote is made visible to devices) and BeginAccess begins it again
  // (DMA_BUF_SYNC_START: what devices wrote since is made visible to the
  // CPU, on hardware whose caches are not coherent too). Touch the memory
  // only in between. FAILED_PRECONDITION when unmapped, or when access is
  // begun already (BeginAccess) or ended already (EndAccess); else the
  // ioctl's error, e.g. the view was revoked meanwhile (the access is
  // ended either way). A memfd needs no bracket: only which one is kept.
  absl::Status BeginAccess();
  absl::Status EndAccess();

  // Ends CPU access if begun (as EndAccess) and unmaps, as gralloc's
  // unlock does: the end's error, e.g. the view was revoked meanwhile
  // (what was written since reaches no one). Unmapped either way; then a
  // no-op. Destruction does the same and drops the error.
  absl::Status Unmap();

 private:
  friend class Buffer;
  void Reset();
  void* data_ = nullptr;
  size_t size_ = 0;
  SharedFd sync_fd_;  // the dma-buf fd the bracket is on
  uint64_t sync_flags_ = 0;
  bool in_access_ = false;  // between a begin and its end
  Access access_ = Access::kNone;
};

// One buffer this process holds an fd for. Destroying it closes the fd;
// the daemon's hold ends with Client::Release or when the session ends.
class Buffer {
 public:
  // `info.fd_kind` says whether `fd` is a dma-buf; unspecified, the fd
  // itself is asked (fstatfs).
  Buffer(v1::BufferInfo info, UniqueFd fd);
  Buffer(Buffer&&) = default;
  Buffer& operator=(Buffer&&) = default;

  uint64_t id() const { return info_.id(); }
  uint64_t size() const { return info_.size(); }
  const v1::BufferInfo& info() const { return info_; }
  const v1::BufferLayout& layout() const { return info_.layout(); }
  int fd() const { return fd_.get(); }
  // Whether the fd is a dma-buf (else a memfd).
  bool is_dmabuf() const { return fd_ && dmabuf_; }

  // Maps the whole buffer. PERMISSION_DENIED if the fd does not carry
  // `access` (e.g. kReadWrite on a buffer shared read-only); NOT_FOUND
  // ("No such device") for a view its producer revoked (the halloc
  // module's ENODEV: the memory is no longer there for this fd), as the
  // BeginAccess and EndAccess of a mapping made before are.
  absl::StatusOr<Mapping> Map(Access access) const;

  // Implicit-sync fences as sync_files (DMA_BUF_IOCTL_EXPORT_SYNC_FILE /
  // IMPORT_SYNC_FILE, Linux 6.0+), for explicit-sync users (Vulkan, KMS
  // IN_FENCE_FD) next to implicit-sync ones. ExportSyncFile(kRead): what a
  // reader waits for (the writers); kReadWrite: what a writer waits for
  // (every user). ImportSyncFile adds `sync_file` as a read (kRead) or a
  // write (kReadWrite) fence. FAILED_PRECONDITION on a memfd (no fences),
  // UNIMPLEMENTED on kernels without the ioctls, INVALID_ARGUMENT for kNone.
  absl::StatusOr<UniqueFd> ExportSyncFile(Access access) const;
  absl::Status ImportSyncFile(const UniqueFd& sync_file, Access access) const;

  // Gives up the fd: the fd itself, or a dup while a Mapping still shares
  // it. The Buffer has no fd afterwards.
  [[nodiscard]] absl::StatusOr<UniqueFd> TakeFd() { return fd_.Release(); }

 private:
  v1::BufferInfo info_;
  SharedFd fd_;  // shared with this buffer's dma-buf Mappings
  bool dmabuf_ = false;
};

v1::BufferDescriptor BlobDescriptor(uint64_t size, uint64_t usage = 0,
                                    absl::string_view name = "");
v1::BufferDescriptor ImageDescriptor(uint32_t width, uint32_t height,
                                     uint32_t fourcc, uint64_t usage,
                                     absl::string_view name = "");

class Client {
 public:
  static absl::StatusOr<Client> Connect(const ConnectOptions& options = {});
  // A moved-from Client may only be destroyed or assigned to (unlike a
  // moved-from Buffer, whose calls fail cleanly).
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // The session as the daemon saw it (kernel-verified).
  uint64_t session_id() const;
  uid_t uid() const;

  absl::StatusOr<Buffer> Allocate(const v1::BufferDescriptor& desc);
  absl::StatusOr<std::vector<Buffer>> Allocate(const v1::BufferDescriptor& desc,
                                               uint32_t count);
  absl::Status Release(uint64_t buffer_id);
  absl::Status Release(absl::Span<const uint64_t> buffer_ids);
  absl::StatusOr<v1::BufferInfo> Describe(uint64_t buffer_id);
  absl::StatusOr<std::vector<v1::BufferInfo>> List(bool all = false);
  absl::StatusOr<v1::StatsResponse> Stats();
  absl::StatusOr<v1::IsSupportedResponse> IsSupported(
      const v1::BufferDescriptor& desc, uint32_t count = 1);

  // Grants uid `peer_uid` access to `buffer_id` with CPU rights `cpu`
  // (UNSPECIFIED: the caller's own). Pass grant.token() to the peer.
  absl::StatusOr<v1::Grant> Share(uint64_t buffer_id, uid_t peer_uid,
                                  v1::CpuAccess cpu = v1::CPU_ACCESS_UNSPECIFIED);
  // Grants the client the policy calls `peer_name` access.
  absl::StatusOr<v1::Grant> ShareWithClient(
      uint64_t buffer_id, absl::string_view peer_name,
      v1::CpuAccess cpu = v1::CPU_ACCESS_UNSPECIFIED);
  // Per-client accounting (root and the daemon's uid): every page's rows
  // in one response.
  absl::StatusOr<v1::DumpResponse> Dump();
  // Takes a buffer shared with us.
  absl::StatusOr<Buffer> Import(absl::string_view grant_token);
  // Withdraws a grant this session made; on hallocd's halloc backend, every
  // fd imported through it is cut off, in every process, before it returns.
  absl::Status Revoke(uint64_t grant_id);
  // Whether Revoke cuts off the fds imported through the grant, in every
  // process (hallocd's halloc backend; Welcome.live_revoke). False: they
  // stay valid, and Revoke ends only hallocd's holds.
  bool live_revoke() const;
  // Sets dataspace, blend mode or crop (`type`) from `value`.
  absl::StatusOr<v1::BufferInfo> SetMetadata(uint64_t buffer_id,
                                             v1::StandardMetadataType type,
                                             const v1::BufferMetadata& value);

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  // `buffers` when they are the `count` asked for (0: one); else they are
  // released and the answer is DATA_LOSS.
  absl::StatusOr<std::vector<Buffer>> AsAsked(std::vector<Buffer> buffers, uint32_t count);
  // Share and ShareWithClient: on the broker where hallocd serves it.
  absl::StatusOr<v1::Grant> ShareAs(v1::ShareRequest req);
  std::unique_ptr<Impl> impl_;
};

// An IsSupported reply as a status: OK when supported; otherwise the
// refusal's code and reason, UNKNOWN when the reply names no refusal code
// (OK, or one this client does not know) so that a refusal never reads
// as success.
absl::Status SupportStatus(const v1::IsSupportedResponse& reply);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_CLIENT_H_
