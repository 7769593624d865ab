// The registry's room: whether a session, hallocd and a client's quota
// have room for more buffers, whether a grant has room for another import, what is reserved for
// calls making them, and the charges of released memory that is gone by now (registry.h: "Released
// memory").
#include <glog/logging.h>

#include <algorithm>
#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/policy/decide.h"
#include "service/registry.h"

namespace halloc {

absl::Status Registry::JudgeLocked(const std::string& quota_key,
                                   QuotaJudge quota) const {
  std::pair<uint64_t, uint64_t> owned{0, 0};
  for (const auto* by_key : {&charged_, &reserved_charge_}) {
    if (auto c = by_key->find(quota_key); c != by_key->end()) {
      owned.first += c->second.first;
      owned.second += c->second.second;
    }
  }
  return quota(owned.first, owned.second);
}

absl::Status Registry::ImportRoom(uint64_t session_id, uint64_t grant_id,
                                  const BufferRecord& buffer) const {
  if (auto let_go = buffer.let_go_views.find(grant_id);
      let_go != buffer.let_go_views.end() && let_go->second.size() >= kMaxImportsPerGrant) {
    // Each is kept for a revoke of the grant (its fd may live on).
    return absl::ResourceExhaustedError(absl::StrCat(
        "grant ", grant_id, " was imported and let go ", let_go->second.size(), " times; limit is ",
        kMaxImportsPerGrant, " (keep the buffer, or ask for a new grant)"));
  }
  if (auto routes = buffer.imports.find(session_id); routes != buffer.imports.end()) {
    if (auto r = routes->second.find(grant_id);
        r != routes->second.end() && r->second.views.size() >= kMaxImportsPerGrant) {
      return absl::ResourceExhaustedError(
          absl::StrCat("this session imported grant ", grant_id, " ", r->second.views.size(),
                       " times; limit is ", kMaxImportsPerGrant, " (keep the fd it has)"));
    }
  }
  size_t views = 0;  // a scan of the buffer's importing sessions
  for (const auto& [sid, routes] : buffer.imports) {
    if (auto r = routes.find(grant_id); r != routes.end()) views += r->second.views.size();
  }
  if (views >= kMaxViewsPerGrant) {
    return absl::ResourceExhaustedError(absl::StrCat("grant ", grant_id, " has ", views,
                                                     " imports live; limit is ", kMaxViewsPerGrant,
                                                     " (release some, or ask for a new grant)"));
  }
  if (auto via = buffer.imported_via.find(session_id); via != buffer.imported_via.end() &&
                                                       via->second.size() >= kMaxGrantsPerImport &&
                                                       !via->second.contains(grant_id)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this session holds buffer ", buffer.id, " through ", via->second.size(),
                     " grants already; limit is ", kMaxGrantsPerImport,
                     " (import through one of those, or release the buffer first)"));
  }
  return absl::OkStatus();
}

absl::Status Registry::SessionRoom(const Holding& holding, uint32_t count) const {
  if (holding.buffers.size() + count > max_buffers_per_session_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session holds ", holding.buffers.size(),
                     " buffers; limit is ", max_buffers_per_session_));
  }
  return absl::OkStatus();
}

void Registry::SetMaxBuffers(uint64_t max_buffers) {
  absl::MutexLock lock(&mu_);
  max_buffers_ = max_buffers;
}

Registry::Reservation& Registry::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    GiveBack();
    registry_ = std::exchange(other.registry_, nullptr);
    count_ = std::exchange(other.count_, 0);
    quota_key_ = std::move(other.quota_key_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void Registry::Reservation::GiveBack() {
  if (registry_ != nullptr) {
    Registry* registry = registry_;
    absl::MutexLock lock(&registry->mu_);
    registry->UnreserveLocked(*this);
  }
  registry_ = nullptr;
}

void Registry::UnreserveLocked(Reservation& r) {
  if (r.registry_ == this && r.count_ != 0) {
    DCHECK_LE(r.count_, reserved_);
    reserved_ -= std::min<uint64_t>(r.count_, reserved_);
    auto c = reserved_charge_.find(r.quota_key_);
    if (c != reserved_charge_.end()) {
      DCHECK_LE(r.count_, c->second.first);
      DCHECK_LE(r.bytes_, c->second.second);
      c->second.first -= std::min<uint64_t>(r.count_, c->second.first);
      c->second.second -= std::min<uint64_t>(r.bytes_, c->second.second);
      if (c->second.first == 0) reserved_charge_.erase(c);
    }
  }
  r.registry_ = nullptr;
  r.count_ = 0;
  r.bytes_ = 0;
  r.quota_key_.clear();
}

absl::Status Registry::DaemonRoom(uint32_t count) const {
  // Reserved: being allocated now (CheckRoom passed, Add not yet called).
  // Read views (ReadView) are fds like buffers.
  const uint64_t held = buffers_.size() + lingering_.size() + reserved_ + read_views_;
  if (max_buffers_ == 0 || held + count <= max_buffers_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("hallocd holds ", held, " buffer fds (", lingering_.size(),
                   " released but still open or mapped somewhere, ", reserved_, " being made, ",
                   read_views_, " read-only views); its limit is ", max_buffers_,
                   ", the rest of its fds being kept for connections (--max_buffers)"));
}

absl::StatusOr<UniqueFd> Registry::ReadView(const BufferRecord& buffer, ViewOpener open) {
  {
    absl::MutexLock lock(&mu_);
    if (buffer.read_view) return buffer.read_view.Dup();  // fixed once set
    auto b = buffers_.find(buffer.id);
    bool keep = b != buffers_.end() && b->second.get() == &buffer;
    if (keep && !DaemonRoom(1).ok() && !lingering_.empty()) {
      SettleLocked();  // some of the released memory charged may be gone
    }
    keep = keep && DaemonRoom(1).ok();
    if (keep) {
      // Opened under the lock (once per buffer): two first deliveries at
      // once then open one view, not two.
      ASSIGN_OR_RETURN(buffer.read_view, open());
      ++read_views_;
      return buffer.read_view.Dup();
    }
  }
  return open();  // kept by no one
}

absl::Status Registry::SharedRoomLocked(uint32_t count, const std::string& quota_key,
                                        QuotaJudge quota) {
  for (bool settled = false;; settled = true) {
    absl::Status judged = DaemonRoom(count);
    if (judged.ok()) judged = JudgeLocked(quota_key, quota);
    if (judged.ok() || settled || lingering_.empty()) return judged;
    // Some of the released memory charged may be gone by now.
    SettleLocked();
  }
}

absl::Status Registry::CheckRoomLocked(const Holding& holding, uint32_t count,
                                       const std::string& quota_key,
                                       QuotaJudge quota) {
  RETURN_IF_ERROR(SessionRoom(holding, count));
  return SharedRoomLocked(count, quota_key, quota);
}

void Registry::UnchargeLocked(const std::string& quota_key, uint64_t bytes) {
  auto c = charged_.find(quota_key);
  if (c == charged_.end()) return;
  c->second.first -= 1;
  c->second.second -= bytes;
  if (c->second.first == 0) {
    // A client and uid that own nothing leave no row behind: uids come and
    // go (a user namespace has 65,536), each row is a metrics series.
    charged_.erase(c);
    allocated_.erase(quota_key);
  }
}

void Registry::SettleLocked() {
  // fds the watch kept (for want of room) and needs no more are closed by
  // the reaper: each close may free pages, and this runs under mu_.
  std::vector<UniqueFd> closing;
  const std::vector<uint64_t> gone = gone_watch_->TakeGone(&closing);
  for (UniqueFd& fd : closing) reaper_.Add(std::make_shared<UniqueFd>(std::move(fd)));
  for (uint64_t id : gone) {
    auto it = lingering_.find(id);
    if (it == lingering_.end()) continue;
    UnchargeLocked(it->second.charged_to, it->second.size);
    lingering_bytes_ -= it->second.size;
    lingering_.erase(it);
  }
}

absl::Status Registry::CheckRoom(uint64_t session_id, uint32_t count,
                                 const std::string& quota_key, QuotaJudge quota,
                                 bool may_wait, Reservation* reservation, uint64_t bytes) {
  bool again = false;
  for (;;) {
    bool daemon_full = false;
    bool room = false;
    {
      absl::MutexLock lock(&mu_);
      auto h = holdings_.find(session_id);
      if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
      // Only a shared refusal (hallocd's or the quota's) may be lifted by
      // memory being freed.
      RETURN_IF_ERROR(SessionRoom(h->second, count));
      absl::Status s = SharedRoomLocked(count, quota_key, quota);
      if (s.ok()) {
        if (reservation != nullptr && count != 0) {
          reserved_ += count;
          auto& [buffers, reserved_bytes] = reserved_charge_[quota_key];
          buffers += count;
          reserved_bytes += bytes;
        }
        room = true;
      } else {
        if (again || lingering_.empty()) return s;
        if (!may_wait) {
          // The caller must not wait for pages to be freed (the broker's
          // thread): it may ask again where it may.
          s.SetPayload(kWaitForReleasedMemory, absl::Cord("1"));
          return s;
        }
        daemon_full = !DaemonRoom(count).ok();
      }
    }
    if (room) {
      // Outside the lock: replacing what `reservation` held gives that back.
      if (reservation != nullptr) {
        *reservation = count == 0 ? Reservation() : Reservation(this, count, quota_key, bytes);
      }
      return absl::OkStatus();
    }
    // Refused with released memory charged: what the reaper still has
    // queued gets its daemon fd closed (and is followed) first, so a
    // client that closed its fds before its Release is not refused for
    // memory that goes the moment hallocd's own fd does. Outside the lock:
    // closing frees pages (gigabytes, maybe), and nobody else should wait
    // for that. Then what the refused uid (anyone's, when hallocd is full)
    // let go of is looked at again, where that is work (dma-bufs are asked
    // about, not heard of).
    reaper_.Flush();
    gone_watch_->Refresh(SplitQuotaKey(quota_key).second);
    if (daemon_full) gone_watch_->Refresh(std::nullopt);
    again = true;
  }
}

}  // namespace halloc
