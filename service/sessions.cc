#include "service/sessions.h"

#include "absl/strings/escaping.h"
#include "service/util/random.h"

namespace halloc {

std::shared_ptr<Session> SessionTable::Open(Identity creds, std::shared_ptr<FdChannel> fds,
                                            SessionProcess process) {
  std::string token = absl::BytesToHexString(RandomBytes(16));
  absl::MutexLock lock(&mu_);
  auto session = std::make_shared<Session>(next_id_++, token, std::move(creds), std::move(fds),
                                           std::move(process));
  by_id_.emplace(session->id(), session);
  by_token_.emplace(std::move(token), session);
  return session;
}

std::shared_ptr<Session> SessionTable::Close(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return nullptr;
  std::shared_ptr<Session> session = std::move(it->second);
  by_id_.erase(it);
  by_token_.erase(session->token());
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionTable::Authenticate(
    absl::string_view token) const {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "no session: connect to the broker socket first and send its token "
        "as metadata 'halloc-session'");
  }
  absl::MutexLock lock(&mu_);
  auto it = by_token_.find(token);
  if (it == by_token_.end()) {
    return absl::UnauthenticatedError("unknown or closed session token");
  }
  return it->second;
}

std::shared_ptr<Session> SessionTable::Find(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

size_t SessionTable::size() const {
  absl::MutexLock lock(&mu_);
  return by_id_.size();
}

}  // namespace halloc
