// How the core hands fds to a client, whatever carries them.
//
// The allocator core (allocator.h) never touches a socket: it gives the fds
// of one call to an FdChannel, all of them or none. The broker gives each
// session a SocketFdChannel over its connection (the gRPC path: fds go ahead
// of the gRPC reply) and answers fast-path requests with a channel that puts
// the reply and the fds in one record. Tests may pass any channel.
#ifndef HALLOC_SERVICE_FD_CHANNEL_H_
#define HALLOC_SERVICE_FD_CHANNEL_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {

class FdChannel {
 public:
  virtual ~FdChannel() = default;
  // `info` describes `fds` (one entry each, in order); `reply` is the
  // answer of the Allocate call that hands them out (null for Import), for
  // a channel that carries replies too.
  virtual absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                            const v1::AllocateResponse* reply) = 0;
};

// A broker connection as a channel: BrokerFrame{buffer|buffers} records on
// the socket it owns (proto/halloc/v1/broker.proto), sent without blocking:
// a client that does not read its socket gets RESOURCE_EXHAUSTED, never a
// stuck daemon. It owns the socket so that the fd number cannot be reused
// while any session still refers to it.
class SocketFdChannel : public FdChannel {
 public:
  explicit SocketFdChannel(UniqueFd sock) : sock_(std::move(sock)) {}
  int fd() const { return sock_.get(); }
  absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                    const v1::AllocateResponse* reply) override;

 private:
  const UniqueFd sock_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_FD_CHANNEL_H_
