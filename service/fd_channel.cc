#include "service/fd_channel.h"

#include <utility>

#include "clients/cpp/halloc/base/scm.h"

namespace halloc {

SocketFdChannel::SocketFdChannel(UniqueFd sock, uid_t uid, std::shared_ptr<UnreadFds> unread)
    : sock_(std::move(sock)), unread_(std::move(unread)) {
  if (unread_) handle_ = unread_->Open(sock_.get(), uid);
}

SocketFdChannel::~SocketFdChannel() {
  if (unread_) unread_->Retire(handle_, std::move(sock_));
}

absl::Status SocketFdChannel::SendCounted(absl::string_view bytes,
                                          absl::Span<const int> fds) {
  const bool counted = unread_ && !fds.empty();
  if (counted) {
    if (absl::Status s = unread_->Reserve(handle_, fds.size(), bytes.size()); !s.ok()) {
      return s;
    }
  }
  // Only counted sends need their Sent in the socket's order; a record
  // without fds goes out whole, in any order, without the lock.
  absl::MutexLockMaybe lock(counted ? &send_mu_ : nullptr);
  absl::Status sent = SendRecord(sock_.get(), bytes, fds, /*nonblocking=*/true);
  if (counted) {
    if (sent.ok()) {
      unread_->Sent(handle_, fds.size(), bytes.size());
    } else {
      unread_->Unreserve(handle_, fds.size(), bytes.size());
    }
  }
  return sent;
}

absl::Status SocketFdChannel::Send(const v1::BufferFds& info, absl::Span<const int> fds,
                                   const v1::AllocateResponse*) {
  v1::BrokerFrame frame;
  if (info.buffers_size() == 1) {
    *frame.mutable_buffer() = info.buffers(0);
  } else {
    *frame.mutable_buffers() = info;
  }
  return SendCounted(frame.SerializeAsString(), fds);
}

}  // namespace halloc
