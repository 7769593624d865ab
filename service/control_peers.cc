#include "service/control_peers.h"

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

namespace halloc {

void ControlPeers::Set(int fd, const ucred& cred) {
  absl::MutexLock lock(&mu_);
  by_fd_[fd] = cred;
}

std::optional<ucred> ControlPeers::Of(absl::string_view peer) const {
  int fd = -1;
  if (!absl::ConsumePrefix(&peer, "fd:") || !absl::SimpleAtoi(peer, &fd) || fd < 0) {
    return std::nullopt;
  }
  absl::MutexLock lock(&mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

}  // namespace halloc
