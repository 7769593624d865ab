#include "service/fd_channel.h"

#include "clients/cpp/halloc/base/scm.h"

namespace halloc {

absl::Status SocketFdChannel::Send(const v1::BufferFds& info, absl::Span<const int> fds,
                                   const v1::AllocateResponse*) {
  v1::BrokerFrame frame;
  if (info.buffers_size() == 1) {
    *frame.mutable_buffer() = info.buffers(0);
  } else {
    *frame.mutable_buffers() = info;
  }
  return SendRecord(sock_.get(), frame.SerializeAsString(), fds, /*nonblocking=*/true);
}

}  // namespace halloc
