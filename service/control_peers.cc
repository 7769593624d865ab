#include "service/control_peers.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace halloc {

void ControlPeers::Set(int fd, const ucred& cred, std::optional<uid_t> charged,
                       std::optional<uint64_t> start) {
  absl::MutexLock lock(&mu_);
  by_fd_[fd] = Connection{cred, charged.value_or(cred.uid), start, ++handovers_};
}

std::optional<ControlPeers::Connection> ControlPeers::Of(absl::string_view peer) const {
  int fd = -1;
  if (!absl::ConsumePrefix(&peer, "fd:") || !absl::SimpleAtoi(peer, &fd) || fd < 0) {
    return std::nullopt;
  }
  absl::MutexLock lock(&mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

std::optional<uid_t> ControlPeers::LimitUid(const ControlPeers* peers, absl::string_view peer) {
  if (peers == nullptr) return std::nullopt;
  const std::optional<Connection> c = peers->Of(peer);
  return c ? c->charged : static_cast<uid_t>(-1);
}

ControlPeers::Call ControlPeers::CallOn(const ControlPeers* peers, absl::string_view peer) {
  if (peers == nullptr) return Call{std::nullopt, std::string(peer)};
  std::optional<Connection> p = peers->Of(peer);
  if (!p) return Call{static_cast<uid_t>(-1), std::string(peer)};
  return Call{p->charged, absl::StrCat(peer, "#", p->handover)};
}

}  // namespace halloc
