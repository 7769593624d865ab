#include "service/registry.h"

#include <glog/logging.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/metadata.h"
#include "service/policy/decide.h"
#include "service/util/log_limit.h"

namespace halloc {

namespace {

absl::Status NotHeld(uint64_t id) {
  return absl::NotFoundError(absl::StrCat("no buffer ", id, " held"));
}

// The first `room` of `rows` in order; true if some were left out.
template <typename T>
bool FirstOfPage(std::vector<T>& rows, size_t room) {
  const bool more = rows.size() > room;
  if (more) {
    std::nth_element(rows.begin(), rows.begin() + room, rows.end());
    rows.resize(room);
  }
  std::sort(rows.begin(), rows.end());
  return more;
}

}  // namespace

BufferRecord::~BufferRecord() {
  // (Without an fd there is nothing to follow: Follow reports it gone.) By
  // the uid it is charged to, as a refusal asks (RoomFor): a subordinate
  // uid's memory is its user's.
  // hallocd's own read view is not a reference the watch should wait for.
  read_view.reset();
  if (gone_watch != nullptr) {
    gone_watch->Follow(std::move(fd), id, SplitQuotaKey(charged_to).second);
  }
}

CpuAccess BufferRecord::JustifiedRights(uint64_t session_id) const {
  CpuAccess widest = session_id == owner_session && owner_holds ? owner_access
                                                                : CpuAccess::kNone;
  if (auto routes = imports.find(session_id); routes != imports.end()) {
    for (const auto& [grant, route] : routes->second) {
      if (Wider(route.access, widest)) widest = route.access;
    }
  }
  return widest;
}

Registry::Registry(std::string backend, bool dma_bufs, uint64_t max_buffers_per_session,
                   std::shared_ptr<LastReferenceFollower> follower)
    : backend_(std::move(backend)),
      fd_kind_(dma_bufs ? v1::FD_KIND_DMA_BUF : v1::FD_KIND_MEMFD),
      max_buffers_per_session_(max_buffers_per_session),
      gone_watch_(follower != nullptr ? std::move(follower)
                                      : std::make_shared<LastReferenceWatch>()) {}

// --- Sessions --------------------------------------------------------------

void Registry::Join(uint64_t session_id, const Identity& creds) {
  absl::MutexLock lock(&mu_);
  holdings_[session_id].creds = creds;
}

void Registry::Leave(uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  auto it = holdings_.find(session_id);
  if (it == holdings_.end()) return;
  Holding& holding = it->second;
  const std::vector<uint64_t> grants(holding.grants.begin(),
                                     holding.grants.end());
  // Grants to look at once the holds are gone: those kept here, and those
  // shared on through grants that went (DropUnrevocable).
  std::vector<uint64_t> check;
  for (uint64_t g : grants) {
    GrantRecord& grant = grants_.at(g);
    if (grant.rooted || !Reaches(grant, session_id)) {
      check.insert(check.end(), grant.onward.begin(), grant.onward.end());
      DropGrant(g);
      continue;
    }
    // Shared on from imports, and imported: nobody can import it any
    // more, but a live revoke of a grant it came through must still reach
    // those who did (Revoke), so it stays until then or its buffer goes
    // (or, below, no revoke can reach it any more).
    grant_tokens_.erase(grant.token);
    grant.token.clear();
    check.push_back(g);
  }
  const std::vector<uint64_t> held(holding.buffers.begin(),
                                   holding.buffers.end());
  for (uint64_t b : held) DropHold(session_id, holding, b);
  holdings_.erase(it);
  DropUnrevocable(std::move(check));
  DropUnreaching({});  // kept grants whose onward went with those
}

// --- Allocation and release ------------------------------------------------

absl::Status Registry::Add(uint64_t session_id,
                           absl::Span<const std::shared_ptr<BufferRecord>> fresh,
                           CpuAccess access, QuotaJudge quota,
                           v1::AllocateResponse* reply, Reservation reservation) {
  absl::MutexLock lock(&mu_);
  UnreserveLocked(reservation);  // taken: counted as held (and charged) below
  if (fresh.empty()) return absl::OkStatus();
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  Holding& holding = h->second;
  RETURN_IF_ERROR(CheckRoomLocked(holding, fresh.size(),
                                  fresh.front()->charged_to, quota));
  for (const std::shared_ptr<BufferRecord>& buffer : fresh) {
    buffer->id = next_id_++;
    buffer->owner_session = session_id;
    buffer->holders.emplace(session_id, access);
    buffer->owner_access = access;
    buffer->owner_holds = true;
    auto& [charged_buffers, charged_bytes] = charged_[buffer->charged_to];
    charged_buffers += 1;
    charged_bytes += buffer->size;
    holding.buffers.insert(buffer->id);
    buffers_.emplace(buffer->id, buffer);
    live_bytes_ += buffer->size;
    ++allocations_total_;
    ++allocated_[buffer->charged_to];
    if (reply != nullptr) *reply->add_buffers() = Info(*buffer, session_id, Holders::kNone);
  }
  return absl::OkStatus();
}

absl::Status Registry::Release(uint64_t session_id, absl::Span<const uint64_t> ids,
                               bool import_references, absl::Span<const uint64_t> generations) {
  if (!generations.empty() && (!import_references || generations.size() != ids.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hold generations name the hold of each import reference given back: one per id, with "
        "import references only (",
        ids.size(), " ids, ", generations.size(), " generations)"));
  }
  // The hold the i-th id's reference is on (0: any).
  auto generation = [&](size_t i) { return generations.empty() ? 0 : generations[i]; };
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  Holding& holding = h->second;
  // All or nothing: check every id before dropping any. A reference on a
  // hold named by its generation is given back already when that hold is
  // not held now.
  for (size_t i = 0; i < ids.size(); ++i) {
    if (generation(i) != 0) continue;
    if (!holding.buffers.contains(ids[i]) && !holding.revoked.contains(ids[i])) {
      return NotHeld(ids[i]);
    }
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint64_t id = ids[i];
    if (import_references) {
      // One on a hold a revoke took is given back already (a revoke is
      // remembered only while not held: Import forgets it); the memory of
      // the revoke stays for the holder's own Release, which a library's
      // give-back must not use up. So is one on a hold of another
      // generation: a newer hold keeps its references.
      DropReference(session_id, holding, id, generation(i));
    } else {
      holding.ForgetRevoked(id);
      if (holding.buffers.contains(id)) DropHold(session_id, holding, id);
    }
  }
  return absl::OkStatus();
}

void Registry::Holding::RememberRevoked(uint64_t buffer_id, uint64_t serial, size_t most) {
  ForgetRevoked(buffer_id);
  revoked.emplace(buffer_id, serial);
  revoked_in_order.emplace(serial, buffer_id);
  if (revoked.size() <= most) return;
  auto oldest = revoked_in_order.begin();
  revoked.erase(oldest->second);
  revoked_in_order.erase(oldest);
}

bool Registry::Holding::ForgetRevoked(uint64_t buffer_id) {
  auto it = revoked.find(buffer_id);
  if (it == revoked.end()) return false;
  revoked_in_order.erase(it->second);
  revoked.erase(it);
  return true;
}

void Registry::DropHold(uint64_t session_id, Holding& holding,
                        uint64_t buffer_id) {
  holding.buffers.erase(buffer_id);
  import_refs_.erase({session_id, buffer_id});
  auto it = buffers_.find(buffer_id);
  if (it == buffers_.end()) return;
  BufferRecord& buffer = *it->second;
  if (buffer.holders.erase(session_id) != 0 && session_id != buffer.owner_session) {
    if (auto n = import_holds_.find(holding.creds.charged_uid());
        n != import_holds_.end() && --n->second == 0) {
      import_holds_.erase(n);
    }
  }
  std::vector<uint64_t> through;  // grants it imported the buffer through
  auto no_longer_through = [&](uint64_t grant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (auto g = grants_.find(grant); g != grants_.end()) {
      g->second.importers.erase(session_id);
      through.push_back(grant);
    }
  };
  if (auto routes = buffer.imports.find(session_id); routes != buffer.imports.end()) {
    for (auto& [grant, route] : routes->second) {
      no_longer_through(grant);
      if (!grants_.contains(grant) || route.views.empty()) continue;
      std::vector<uint64_t>& views = buffer.let_go_views[grant];
      views.insert(views.end(), route.views.begin(), route.views.end());
    }
    buffer.imports.erase(routes);
  }
  if (auto via = buffer.imported_via.find(session_id); via != buffer.imported_via.end()) {
    for (const auto& [grant, judged] : via->second) no_longer_through(grant);
    buffer.imported_via.erase(via);
  }
  // A grant an ended session kept for a revoke to follow goes once it
  // reaches no one: its last importer let go (without live revoke nothing
  // of theirs is left to end).
  DropUnreaching(through);
  if (session_id == buffer.owner_session) buffer.owner_holds = false;
  if (!buffer.holders.empty()) return;
  const std::vector<uint64_t> grants(buffer.grants.begin(),
                                     buffer.grants.end());
  for (uint64_t g : grants) DropGrant(g);
  live_bytes_ -= buffer.size;
  if (buffer.charge_until_gone) {
    // Charged until its memory is gone (the reaper has it followed).
    buffer.gone_watch = gone_watch_;
    lingering_.emplace(buffer.id, Lingering{buffer.charged_to, buffer.size});
    lingering_bytes_ += buffer.size;
    // Settled now and then on the way too, so that what went is forgotten
    // without a refusal or a Stats call (each costs a read of the events):
    // at every doubling of what lingers, at least every kSettleEvery.
    if (lingering_.size() >= settle_at_) {
      SettleLocked();
      settle_at_ = std::max(kSettleEvery, 2 * lingering_.size());
    }
  } else {
    UnchargeLocked(buffer.charged_to, buffer.size);
  }
  ++releases_total_;
  if (buffer.read_view) --read_views_;  // closed with the record
  reaper_.Add(std::move(it->second));
  buffers_.erase(it);
}

absl::StatusOr<BufferRecord*> Registry::Held(const Holding& holding,
                                             uint64_t id) const {
  if (!holding.buffers.contains(id)) {
    if (holding.revoked.contains(id)) {
      return absl::NotFoundError(
          absl::StrCat("buffer ", id,
                       " was taken back: the grant this session imported it through was revoked"));
    }
    return NotHeld(id);
  }
  return buffers_.at(id).get();
}

// --- Metadata and listings ---------------------------------------------------

absl::StatusOr<v1::BufferInfo> Registry::SetMetadata(
    uint64_t session_id, const v1::SetMetadataRequest& req) {
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  ASSIGN_OR_RETURN(BufferRecord * buffer, Held(h->second, req.buffer_id()));
  // The owner, whatever its CPU rights (a protected or CPU-read-only
  // producer still tags its dataspace), and importers it shared with read-write.
  const bool owner = buffer->owner_session == session_id && buffer->owner_holds;
  if (OwnerSetsField(req.type()) && !owner &&
      buffer->holders.at(session_id) != CpuAccess::kReadWrite) {
    return absl::PermissionDeniedError(
        absl::StrCat("buffer ", buffer->id,
                     " was shared with you without write access; its metadata "
                     "is the owner's to set"));
  }
  RETURN_IF_ERROR(SetMetadataField(req.type(), req.value(), buffer->layout,
                                   &buffer->metadata));
  return Info(*buffer, session_id, Holders::kNone);
}

v1::BufferInfo Registry::Info(const BufferRecord& buffer, uint64_t session_id,
                              Holders holders) const {
  v1::BufferInfo info;
  info.set_id(buffer.id);
  info.set_name(buffer.name);
  info.set_size(buffer.size);
  info.set_usage(buffer.usage);
  if (buffer.layout) *info.mutable_layout() = *buffer.layout;
  info.set_backend(backend_);
  info.set_fd_kind(fd_kind_);
  info.set_owner_uid(buffer.owner_uid);
  info.set_owned(buffer.owner_session == session_id);
  if (info.owned()) info.set_imports_total(buffer.imports_total);
  info.set_protected_content((buffer.usage & usage::kProtected) != 0);
  *info.mutable_metadata() = buffer.metadata;
  if (auto h = buffer.holders.find(session_id); h != buffer.holders.end()) {
    info.set_cpu_access(ToProto(h->second));
  }
  if (holders == Holders::kNone) return info;
  // An importer learns how many hold the buffer, not who: the other
  // holders' sessions and pids are the owner's business (it shared them).
  const bool in_full = holders == Holders::kAll || buffer.owner_session == session_id;
  for (const auto& [sid, access] : buffer.holders) {
    v1::Holder* holder = info.add_holders();
    holder->set_owner(sid == buffer.owner_session);
    holder->set_caller(sid == session_id);
    if (holder->owner()) holder->set_uid(buffer.owner_uid);
    if (!in_full && !holder->caller()) continue;
    holder->set_session_id(sid);
    if (auto s = holdings_.find(sid); s != holdings_.end()) {
      holder->set_uid(s->second.creds.uid);
      holder->set_pid(s->second.creds.pid);
    }
  }
  return info;
}

absl::StatusOr<v1::BufferInfo> Registry::Describe(uint64_t session_id,
                                                  uint64_t buffer_id) const {
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  ASSIGN_OR_RETURN(const BufferRecord* buffer, Held(h->second, buffer_id));
  return Info(*buffer, session_id, Holders::kAsSeenByCaller);
}

v1::ListResponse Registry::List(uint64_t session_id, bool all, uint64_t after,
                                size_t page_size) const {
  absl::MutexLock lock(&mu_);
  // The ids past `after`, the page's smallest first.
  std::vector<uint64_t> ids;
  bool more = false;
  if (all) {
    // (An operator's: a scan of every buffer, as Dump's.)
    for (const auto& [id, buffer] : buffers_) {
      if (id > after) ids.push_back(id);
    }
    more = FirstOfPage(ids, page_size);
  } else if (auto h = holdings_.find(session_id); h != holdings_.end()) {
    const absl::btree_set<uint64_t>& held = h->second.buffers;
    for (auto it = held.upper_bound(after); it != held.end(); ++it) {
      if (ids.size() == page_size) {
        more = true;
        break;
      }
      ids.push_back(*it);
    }
  }
  v1::ListResponse resp;
  for (uint64_t id : ids) {
    *resp.add_buffers() = Info(*buffers_.at(id), session_id, all ? Holders::kAll : Holders::kNone);
  }
  if (more && !ids.empty()) resp.set_next_page_token(absl::StrCat(ids.back()));
  return resp;
}

void Registry::FillStats(v1::StatsResponse* s, std::optional<uid_t> only_uid) {
  reaper_.Flush();  // outside the lock (see CheckRoom)
  absl::MutexLock lock(&mu_);
  if (!lingering_.empty()) SettleLocked();
  s->set_live_buffers(buffers_.size());
  s->set_live_bytes(live_bytes_);
  s->set_grants(grants_.size());
  s->set_allocations_total(allocations_total_);
  s->set_releases_total(releases_total_);
  s->set_grants_revoked_total(grants_revoked_total_);
  s->set_released_held_buffers(lingering_.size());
  s->set_released_held_bytes(lingering_bytes_);
  s->set_released_unwatched_total(gone_watch_->unwatched());
  s->set_max_buffers(max_buffers_);
  s->set_read_views(read_views_);
  v1::BackendStats* b = s->add_backends();
  b->set_name(backend_);
  b->set_live_buffers(buffers_.size());
  b->set_live_bytes(live_bytes_);
  for (const auto& [key, allocations] : allocated_) {
    auto [client, uid] = SplitQuotaKey(key);
    if (only_uid && uid != *only_uid) continue;
    v1::ClientStats* c = s->add_clients();
    c->set_client(std::move(client));
    c->set_uid(uid);
    c->set_allocations_total(allocations);
    if (auto use = charged_.find(key); use != charged_.end()) {
      c->set_buffers(use->second.first);
      c->set_bytes(use->second.second);
    }
  }
}

absl::Status Registry::FillDump(v1::DumpResponse* dump, absl::string_view page_token,
                                size_t page_size) {
  // A page token says where the last page stopped: "s<session id>" in the
  // sessions, or "c<quota key, web-safe base64>" in the clients (sessions
  // done).
  bool in_clients = false;
  uint64_t after_session = 0;
  std::string after_key;
  if (!page_token.empty()) {
    const absl::string_view rest = page_token.substr(1);
    const bool ok = page_token[0] == 's'   ? absl::SimpleAtoi(rest, &after_session)
                    : page_token[0] == 'c' ? absl::WebSafeBase64Unescape(rest, &after_key)
                                           : false;
    if (!ok) {
      return absl::InvalidArgumentError(
          "Dump: page_token is not one hallocd gave (a DumpResponse's next_page_token)");
    }
    in_clients = page_token[0] == 'c';
  }
  reaper_.Flush();  // outside the lock (see CheckRoom)
  absl::MutexLock lock(&mu_);
  if (!lingering_.empty()) SettleLocked();
  size_t room = page_size;
  if (!in_clients) {
    std::vector<uint64_t> ids;
    for (const auto& [id, holding] : holdings_) {
      if (id > after_session) ids.push_back(id);
    }
    const bool more = FirstOfPage(ids, room);
    for (uint64_t id : ids) {
      const Holding& holding = holdings_.at(id);
      v1::SessionUsage* u = dump->add_sessions();
      u->set_session_id(id);
      u->set_pid(holding.creds.pid);
      u->set_uid(holding.creds.uid);
      // Cut like a log line's past kLoggedPathBytes: 4 KiB paths, each byte
      // escaped to 4, in every session would make a page too large to read.
      const absl::string_view exe = holding.creds.exe;
      u->set_exe(exe.size() <= kLoggedPathBytes ? Utf8OrEscaped(exe)
                                                : LogSafe(exe, kLoggedPathBytes));
      for (uint64_t b : holding.buffers) {
        const BufferRecord& buffer = *buffers_.at(b);
        if (buffer.owner_session == id) {
          u->set_owned_buffers(u->owned_buffers() + 1);
          u->set_owned_bytes(u->owned_bytes() + buffer.size);
        } else {
          u->set_imported_buffers(u->imported_buffers() + 1);
          u->set_imported_bytes(u->imported_bytes() + buffer.size);
        }
      }
    }
    if (more) {
      dump->set_next_page_token(absl::StrCat("s", ids.back()));
      return absl::OkStatus();
    }
    room -= ids.size();
  }
  std::vector<absl::string_view> keys;
  for (const auto& [key, use] : charged_) {
    if (!in_clients || key > after_key) keys.push_back(key);
  }
  if (FirstOfPage(keys, room)) {
    // (room 0: the sessions filled this page; the clients all follow.)
    dump->set_next_page_token(
        absl::StrCat("c", absl::WebSafeBase64Escape(keys.empty() ? after_key : keys.back())));
  }
  for (absl::string_view key : keys) {
    const std::pair<uint64_t, uint64_t>& use = charged_.find(key)->second;
    v1::ClientQuota* q = dump->add_clients();
    auto [client, uid] = SplitQuotaKey(key);
    q->set_client(std::move(client));
    q->set_uid(uid);
    q->set_buffers(use.first);
    q->set_bytes(use.second);
  }
  return absl::OkStatus();
}

}  // namespace halloc
