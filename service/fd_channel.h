// How the core hands fds to a client, whatever carries them.
//
// The allocator core (allocator.h) never touches a socket: it gives the fds
// of one call to an FdChannel, all of them or none. The broker gives each
// session a SocketFdChannel over its connection (the gRPC path: fds go ahead
// of the gRPC reply) and answers fast-path requests with a channel that puts
// the reply and the fds in one record. Tests may pass any channel.
#ifndef HALLOC_SERVICE_FD_CHANNEL_H_
#define HALLOC_SERVICE_FD_CHANNEL_H_

#include <sys/types.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/broker.pb.h"
#include "service/unread_fds.h"

namespace halloc {

class FdChannel {
 public:
  virtual ~FdChannel() = default;
  // `info` describes `fds` (one entry each, in order); `reply` is the
  // answer of the Allocate call that hands them out (null for Import), for
  // a channel that carries replies too.
  virtual absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                            const v1::AllocateResponse* reply) = 0;
  // The fd of one Import (`info`, `fd`) and the call's answer, `reply`. By
  // default as Send without a reply: the fd goes ahead of the answer, which
  // its caller returns (the gRPC path).
  virtual absl::Status SendImport(const v1::BufferFds& info, int fd,
                                  const v1::ImportResponse& reply) {
    return Send(info, absl::MakeConstSpan(&fd, 1), nullptr);
  }
};

// A broker connection as a channel: BrokerFrame{buffer|buffers} records on
// the socket it owns (proto/halloc/v1/broker.proto), sent without blocking:
// a client that does not read its socket gets RESOURCE_EXHAUSTED, never a
// stuck daemon. It owns the socket so that the fd number cannot be reused
// while any session still refers to it. Given an UnreadFds, every fd it
// sends counts there (for `uid`) until the peer has read it, and at its end
// the socket is handed to UnreadFds::Retire.
class SocketFdChannel : public FdChannel {
 public:
  explicit SocketFdChannel(UniqueFd sock) : sock_(std::move(sock)) {}
  SocketFdChannel(UniqueFd sock, uid_t uid, std::shared_ptr<UnreadFds> unread);
  ~SocketFdChannel() override;
  SocketFdChannel(const SocketFdChannel&) = delete;
  SocketFdChannel& operator=(const SocketFdChannel&) = delete;

  int fd() const { return sock_.get(); }
  absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                    const v1::AllocateResponse* reply) override;
  // One record of `bytes` with `fds`, counted like Send's (for a channel
  // that puts a reply and its fds in one record on this connection).
  absl::Status SendCounted(absl::string_view bytes, absl::Span<const int> fds);

 private:
  UniqueFd sock_;
  const std::shared_ptr<UnreadFds> unread_;
  uint64_t handle_ = 0;
  // Each send with fds and its UnreadFds::Sent (or Unreserve) together, so
  // that UnreadFds learns of those sends in the socket's queue order.
  absl::Mutex send_mu_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_FD_CHANNEL_H_
