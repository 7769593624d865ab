// The registry's grants (registry.h, "Sharing"): Share, Import, Revoke and
// the walk down what was shared on, and the links between grants, importers
// and sessions that the walk follows. An import's references on its hold:
// registry_references.cc.
#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/registry.h"
#include "service/util/random.h"

namespace halloc {

// --- Sharing ---------------------------------------------------------------

absl::StatusOr<v1::Grant> Registry::Share(uint64_t session_id,
                                          uint64_t buffer_id,
                                          ShareJudge judge) {
  std::string token = absl::BytesToHexString(RandomBytes(16));
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  ASSIGN_OR_RETURN(BufferRecord * buffer, Held(h->second, buffer_id));
  const bool rooted = session_id == buffer->owner_session && buffer->owner_holds;
  auto via = buffer->imported_via.find(session_id);
  if (!rooted && (via == buffer->imported_via.end() || via->second.empty())) {
    // Held only through grants revoked since (one landed while its import
    // was under way): nothing left to share on, and a grant made from it
    // would be reached by no revoke.
    return absl::FailedPreconditionError(absl::StrCat(
        "buffer ", buffer_id, " was revoked from this session; it cannot be shared on"));
  }
  ASSIGN_OR_RETURN(GrantView view, judge(buffer->holders.at(session_id)));
  // Judged (the policy's refusals, which no retry mends) before the limits
  // (which one may).
  if (h->second.grants.size() >= kMaxGrantsPerSession) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session has ", h->second.grants.size(), " open grants; limit is ",
        kMaxGrantsPerSession, " (revoke those no longer needed)"));
  }
  // Per the uid it is charged as: a user's sub-uids share one bound.
  const uid_t uid = h->second.creds.charged_uid();
  if (auto n = uid_grants_.find(uid); n != uid_grants_.end()) {
    if (n->second.open >= kMaxGrantsPerUid) {
      return absl::ResourceExhaustedError(
          absl::StrCat("uid ", uid, " has ", n->second.open,
                       " grants open, all its sessions together; limit is ", kMaxGrantsPerUid,
                       " (revoke those no longer needed)"));
    }
    if (!rooted && n->second.onward >= kMaxOnwardGrantsPerUid) {
      return absl::ResourceExhaustedError(
          absl::StrCat("uid ", uid, " has ", n->second.onward,
                       " grants open of buffers it imported (also of "
                       "its ended sessions, while their imports may be revoked); limit is ",
                       kMaxOnwardGrantsPerUid));
    }
  }
  view.id = next_id_++;
  view.buffer_id = buffer_id;
  v1::Grant out;
  out.set_id(view.id);
  out.set_token(token);
  out.set_buffer_id(buffer_id);
  if (!view.peer_name.empty()) {
    out.mutable_peer()->set_name(view.peer_name);
  } else {
    out.mutable_peer()->set_uid(view.peer_uid);
  }
  out.set_cpu_access(ToProto(view.access));
  const uint64_t grant_id = view.id;
  buffer->grants.insert(grant_id);
  h->second.grants.insert(grant_id);
  h->second.grants_by_buffer[buffer_id].insert(grant_id);
  grant_tokens_.emplace(token, grant_id);
  GrantRecord record{std::move(token), session_id, uid, std::move(view)};
  record.rooted = rooted;
  UidGrants& counted = uid_grants_[uid];
  ++counted.open;
  if (!rooted) ++counted.onward;
  if (via != buffer->imported_via.end()) {
    const auto routes = buffer->imports.find(session_id);
    for (const auto& [g, judged] : via->second) {
      // What that route gave: as delivered (CPU-none included: a device-only
      // import), else (the import racing this share) as judged at Import.
      CpuAccess gave = judged;
      if (routes != buffer->imports.end()) {
        if (auto r = routes->second.find(g); r != routes->second.end()) gave = r->second.access;
      }
      record.via.emplace(g, gave);
      if (auto through = grants_.find(g); through != grants_.end()) {
        through->second.onward.insert(grant_id);
      }
    }
  }
  grants_.emplace(grant_id, std::move(record));
  return out;
}

absl::StatusOr<Registry::Imported> Registry::Import(uint64_t session_id,
                                                    absl::string_view token,
                                                    ImportJudge judge) {
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  Holding& holding = h->second;
  auto t = grant_tokens_.find(token);
  if (t == grant_tokens_.end()) {
    return absl::NotFoundError("no such grant (unknown, revoked or expired)");
  }
  const GrantView& grant = grants_.at(t->second).view;
  ASSIGN_OR_RETURN(const CpuAccess access, judge(grant));
  std::shared_ptr<BufferRecord> buffer = buffers_.at(grant.buffer_id);
  RETURN_IF_ERROR(ImportRoom(session_id, t->second, *buffer));
  Imported out;
  out.newly_held = !holding.buffers.contains(buffer->id);
  if (out.newly_held && holding.buffers.size() >= max_buffers_per_session_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session holds ", holding.buffers.size(),
                     " buffers; limit is ", max_buffers_per_session_));
  }
  // A hold of a buffer the session does not own: counted for its uid.
  const bool import_hold = out.newly_held && session_id != buffer->owner_session;
  const uid_t uid = holding.creds.charged_uid();
  if (import_hold) {
    const auto n = import_holds_.find(uid);
    const uint64_t holds = n == import_holds_.end() ? 0 : n->second;
    if (holds >= max_import_holds_per_uid_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("uid ", uid, " holds ", holds,
                       " buffers it imported, all its sessions together; limit is ",
                       max_import_holds_per_uid_, " (release some)"));
    }
  }
  auto [held, inserted] = buffer->holders.emplace(session_id, access);
  if (import_hold) ++import_holds_[uid];
  if (!inserted && Wider(access, held->second)) {
    out.widened_from = held->second;
    held->second = access;
  }
  holding.buffers.insert(buffer->id);
  // Held again: a Release names this hold, not the one a revoke took.
  if (out.newly_held) holding.ForgetRevoked(buffer->id);
  CpuAccess& judged = buffer->imported_via[session_id][t->second];
  if (Wider(access, judged)) judged = access;
  grants_.at(t->second).importers.insert(session_id);
  ImportRefs& refs = import_refs_[{session_id, buffer->id}];
  if (out.newly_held || refs.generation == 0) {
    // A new hold has no entry yet, nor one an allocation made and no
    // import reached: its one reference, the allocation's. Its generation
    // is new either way (nothing named the hold before).
    refs = ImportRefs{next_generation_++, out.newly_held ? 0u : 1u};
  }
  ++refs.refs;
  out.generation = refs.generation;
  out.info = Info(*buffer, session_id, Holders::kNone);
  out.info.set_cpu_access(ToProto(access));
  out.buffer = std::move(buffer);
  out.grant_id = t->second;
  return out;
}

void Registry::UndoWidening(uint64_t session_id, uint64_t buffer_id,
                            CpuAccess widened_to, CpuAccess widened_from) {
  absl::MutexLock lock(&mu_);
  auto b = buffers_.find(buffer_id);
  if (b == buffers_.end()) return;
  BufferRecord& buffer = *b->second;
  auto held = buffer.holders.find(session_id);
  if (held == buffer.holders.end() || held->second != widened_to) return;
  // Live revoke: the routes and the own hold are the whole truth.
  held->second = buffer.imports.contains(session_id)
                     ? buffer.JustifiedRights(session_id)
                     : widened_from;
}

void Registry::DropImportView(uint64_t session_id, uint64_t grant_id, uint64_t buffer_id,
                              uint64_t view_id) {
  absl::MutexLock lock(&mu_);
  auto b = buffers_.find(buffer_id);
  if (b == buffers_.end()) return;
  auto routes = b->second->imports.find(session_id);
  if (routes == b->second->imports.end()) return;
  auto r = routes->second.find(grant_id);
  if (r == routes->second.end()) return;
  std::vector<uint64_t>& views = r->second.views;
  views.erase(std::remove(views.begin(), views.end(), view_id), views.end());
  if (!views.empty()) return;
  routes->second.erase(r);
  // Nor is the grant its way in any more, unless it imported through it
  // since (DropHold, which forgets the rest, need not know of this one).
  auto via = b->second->imported_via.find(session_id);
  if (via == b->second->imported_via.end() || !via->second.contains(grant_id)) {
    if (auto g = grants_.find(grant_id); g != grants_.end()) g->second.importers.erase(session_id);
  }
}

absl::Status Registry::AddImportView(uint64_t session_id, uint64_t grant_id,
                                     uint64_t buffer_id, CpuAccess access,
                                     uint64_t view_id) {
  absl::MutexLock lock(&mu_);
  auto b = buffers_.find(buffer_id);
  if (!grants_.contains(grant_id) || b == buffers_.end() ||
      !b->second->holders.contains(session_id)) {
    return absl::NotFoundError(
        absl::StrCat("grant ", grant_id, " was revoked during the import"));
  }
  grants_.at(grant_id).importers.insert(session_id);
  BufferRecord::Route& route = b->second->imports[session_id][grant_id];
  if (Wider(access, route.access)) route.access = access;
  route.views.push_back(view_id);
  return absl::OkStatus();
}

absl::StatusOr<Registry::Revoked> Registry::Revoke(uint64_t session_id,
                                                   uint64_t grant_id,
                                                   bool live) {
  absl::MutexLock lock(&mu_);
  auto h = holdings_.find(session_id);
  if (h == holdings_.end()) return absl::UnauthenticatedError("session closed");
  if (!h->second.grants.contains(grant_id)) {
    return absl::NotFoundError(absl::StrCat("no grant ", grant_id, " made"));
  }
  const uint64_t buffer_id = grants_.at(grant_id).view.buffer_id;
  Revoked out;
  auto b = buffers_.find(buffer_id);
  if (b == buffers_.end()) {
    DropGrant(grant_id);
    return out;
  }
  // Keeps the record (its fd) alive for the views to be cut, if the last
  // hold goes; without views there is nothing to keep it for (and its last
  // reference should drop on the reaper, not the caller's thread).
  if (live) out.buffer = b->second;
  BufferRecord& buffer = *b->second;
  // A grant goes: the views it delivered to sessions that let go since
  // are cut off too (their fds may be anywhere), then the grant itself,
  // its reverse links (who imported through it, what was shared on
  // through it) kept for the walk below.
  struct Taken {
    uint64_t id;
    absl::flat_hash_set<uint64_t> importers;
    absl::flat_hash_set<uint64_t> onward;
  };
  std::vector<Taken> pending;
  auto revoke_grant = [&](uint64_t g) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    GrantRecord& rec = grants_.at(g);
    pending.push_back({g, std::move(rec.importers), std::move(rec.onward)});
    ++grants_revoked_total_;
    if (auto let_go = buffer.let_go_views.find(g); let_go != buffer.let_go_views.end()) {
      out.views.insert(out.views.end(), let_go->second.begin(), let_go->second.end());
      buffer.let_go_views.erase(let_go);
    }
    DropGrant(g);
  };
  revoke_grant(grant_id);
  std::vector<uint64_t> survivors;  // of the grants looked at (DropUnrevocable)
  // Sessions left with no route. Their holds go once the walk is done: the
  // last of them going frees the buffer and drops its grants, and the
  // views of those still to be walked (of importers that let go) must be
  // found first.
  std::vector<uint64_t> all_cut_off;
  while (!pending.empty()) {
    Taken taken = std::move(pending.back());
    pending.pop_back();
    const uint64_t g = taken.id;
    std::vector<uint64_t> cut_off;  // sessions left with no route
    for (uint64_t sid : taken.importers) {
      const bool owns = sid == buffer.owner_session && buffer.owner_holds;
      if (live) {
        auto routes = buffer.imports.find(sid);
        if (routes == buffer.imports.end()) continue;
        auto r = routes->second.find(g);
        if (r == routes->second.end()) continue;
        out.views.insert(out.views.end(), r->second.views.begin(), r->second.views.end());
        routes->second.erase(r);
        if (routes->second.empty() && !owns) {
          cut_off.push_back(sid);
          continue;
        }
        buffer.holders[sid] = buffer.JustifiedRights(sid);
        continue;
      }
      // No fd can be cut off (a memfd's stay valid), but what hallocd
      // granted goes all the same: a session that held the buffer through
      // this grant alone holds it no more, so it can neither share it on
      // nor keep it, and its owner's charge, alive by a hold (an fd it
      // kept is followed as released memory, under a quota); one left
      // with other grants keeps the widest rights those give.
      auto via = buffer.imported_via.find(sid);
      if (via == buffer.imported_via.end() || !via->second.contains(g) || owns) continue;
      if (via->second.size() == 1) {
        cut_off.push_back(sid);
        continue;
      }
      // As judged at each import (the importer's rule may cap what a
      // grant gives), not as the grants give: a read importer of two
      // read-write grants stays read.
      CpuAccess left = CpuAccess::kNone;
      for (const auto& [other, judged] : via->second) {
        if (other != g && Wider(judged, left)) left = judged;
      }
      buffer.holders[sid] = left;
    }
    // A revoked grant is no session's way in any more: grants shared
    // later do not count it among where they came from.
    for (uint64_t sid : taken.importers) {
      if (auto via = buffer.imported_via.find(sid); via != buffer.imported_via.end()) {
        via->second.erase(g);
      }
    }
    // What was shared on from the cut-off holds goes too: every grant a
    // cut-off session made of this buffer, and every one whose routes are
    // all revoked now, by this revoke or earlier ones (its granter may
    // have released the buffer since).
    const absl::flat_hash_set<uint64_t> cut(cut_off.begin(), cut_off.end());
    absl::flat_hash_set<uint64_t> reached = std::move(taken.onward);
    for (uint64_t sid : cut_off) {
      auto holding = holdings_.find(sid);
      if (holding == holdings_.end()) continue;
      if (auto made = holding->second.grants_by_buffer.find(buffer_id);
          made != holding->second.grants_by_buffer.end()) {
        reached.insert(made->second.begin(), made->second.end());
      }
    }
    for (uint64_t other : reached) {
      auto it = grants_.find(other);
      if (it == grants_.end()) continue;  // revoked already
      GrantRecord& rec = it->second;
      bool gone = cut.contains(rec.from_session);
      if (!gone && !rec.rooted && rec.via.erase(g) > 0) {
        // Gone with its last route, or once those left do not give what it
        // gives (shared read-write through a route revoked since, it would
        // hand out the revoked write access again).
        CpuAccess left = CpuAccess::kNone;
        for (const auto& [v, gave] : rec.via) {
          if (Wider(gave, left)) left = gave;
        }
        gone = rec.via.empty() || Wider(rec.view.access, left);
      }
      if (gone) {
        revoke_grant(other);
      } else {
        survivors.push_back(other);
      }
    }
    all_cut_off.insert(all_cut_off.end(), cut_off.begin(), cut_off.end());
  }
  for (uint64_t sid : all_cut_off) {
    if (auto holding = holdings_.find(sid); holding != holdings_.end()) {
      DropHold(sid, holding->second, buffer_id);
      holding->second.RememberRevoked(
          buffer_id, next_revoke_++,
          std::min<size_t>(max_buffers_per_session_, kMostRevokedRemembered));
    }
  }
  // A grant an ended session kept, whose last open route this revoke
  // took (those left name grants gone with their sessions), can be reached
  // by no revoke any more.
  DropUnrevocable(std::move(survivors));
  DropUnreaching({});  // and kept ones it left reaching no one
  return out;
}

size_t Registry::ImporterLinksForTesting(uint64_t grant_id) const {
  absl::MutexLock lock(&mu_);
  auto g = grants_.find(grant_id);
  return g == grants_.end() ? 0 : g->second.importers.size();
}

absl::Status Registry::CheckLinksForTesting() const {
  absl::MutexLock lock(&mu_);
  auto bad = [](auto&&... what) { return absl::InternalError(absl::StrCat(what...)); };
  // Each hold's references: an entry only for a hold, with one at least
  // (a client may give one back before its import settles: fewer than
  // are under way) and a generation no other entry has.
  absl::flat_hash_set<uint64_t> generations;
  for (const auto& [key, refs] : import_refs_) {
    const auto& [sid, bid] = key;
    auto h = holdings_.find(sid);
    if (h == holdings_.end() || !h->second.buffers.contains(bid)) {
      return bad("session ", sid, " has references on buffer ", bid, ", which it does not hold");
    }
    if (refs.refs == 0) {
      return bad("session ", sid, "'s hold on buffer ", bid, " has no references");
    }
    if (refs.generation == 0 || refs.generation >= next_generation_ ||
        !generations.insert(refs.generation).second) {
      return bad("session ", sid, "'s hold on buffer ", bid, " has generation ", refs.generation,
                 ", not a new one of its own");
    }
  }
  // Who imported each buffer through each open grant, as the buffers say.
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<uint64_t>> through;
  for (const auto& [id, buffer] : buffers_) {
    for (const auto& [sid, routes] : buffer->imports) {
      for (const auto& [g, route] : routes) {
        if (grants_.contains(g)) through[g].insert(sid);
      }
    }
    for (const auto& [sid, via] : buffer->imported_via) {
      for (const auto& [g, judged] : via) {
        if (grants_.contains(g)) through[g].insert(sid);
      }
    }
  }
  for (const auto& [id, grant] : grants_) {
    const absl::flat_hash_set<uint64_t> none;
    auto t = through.find(id);
    if (grant.importers != (t == through.end() ? none : t->second)) {
      return bad("grant ", id, ": its importers are not those who imported through it");
    }
    for (const auto& [v, gave] : grant.via) {
      if (auto g = grants_.find(v); g != grants_.end() && !g->second.onward.contains(id)) {
        return bad("grant ", id, " came through ", v, ", whose onward does not name it");
      }
    }
    for (uint64_t on : grant.onward) {
      auto g = grants_.find(on);
      if (g == grants_.end() || !g->second.via.contains(id)) {
        return bad("grant ", id, "'s onward names ", on, ", which did not come through it");
      }
    }
    if (grant.token.empty() && !RevocableStill(grant)) {
      return bad("grant ", id, " is kept, but no revoke can reach it");
    }
    if (grant.token.empty() && !Reaches(grant)) {
      return bad("grant ", id, " is kept, but reaches no one");
    }
  }
  for (const auto& [sid, holding] : holdings_) {
    size_t by_buffer = 0;
    for (const auto& [b, made] : holding.grants_by_buffer) {
      if (made.empty()) return bad("session ", sid, ": an empty grants_by_buffer entry");
      for (uint64_t g : made) {
        auto it = grants_.find(g);
        if (!holding.grants.contains(g) || it == grants_.end() || it->second.view.buffer_id != b) {
          return bad("session ", sid, ": grants_by_buffer names grant ", g, " wrongly");
        }
      }
      by_buffer += made.size();
    }
    if (by_buffer != holding.grants.size()) {
      return bad("session ", sid, ": grants_by_buffer misses some of its grants");
    }
    if (holding.revoked.size() != holding.revoked_in_order.size() ||
        holding.revoked.size() > max_buffers_per_session_) {
      return bad("session ", sid, ": ", holding.revoked.size(), " revoked buffers remembered");
    }
    for (const auto& [serial, b] : holding.revoked_in_order) {
      auto it = holding.revoked.find(b);
      if (it == holding.revoked.end() || it->second != serial) {
        return bad("session ", sid, ": revoked buffer ", b, " out of order");
      }
    }
  }
  return absl::OkStatus();
}

// --- The links a revoke and an end follow -----------------------------------

void Registry::DropUnrevocable(std::vector<uint64_t> grants) {
  while (!grants.empty()) {
    const uint64_t g = grants.back();
    grants.pop_back();
    auto it = grants_.find(g);
    if (it == grants_.end() || !it->second.token.empty() || RevocableStill(it->second)) {
      continue;
    }
    grants.insert(grants.end(), it->second.onward.begin(), it->second.onward.end());
    DropGrant(g);
  }
}

bool Registry::RevocableStill(const GrantRecord& grant) const {
  if (grant.rooted) return true;
  for (const auto& [g, gave] : grant.via) {
    if (grants_.contains(g)) return true;
  }
  return false;
}

bool Registry::Reaches(const GrantRecord& grant, std::optional<uint64_t> leaving) const {
  auto b = buffers_.find(grant.view.buffer_id);
  if (b == buffers_.end()) return false;
  // Grants shared on through it: revoking it is how a revoke reaches
  // their importers, however many ended sessions down the chain.
  if (!grant.onward.empty()) return true;
  const BufferRecord& buffer = *b->second;
  if (buffer.let_go_views.contains(grant.view.id)) return true;
  for (uint64_t sid : grant.importers) {
    auto routes = buffer.imports.find(sid);
    if (routes != buffer.imports.end() && routes->second.contains(grant.view.id)) return true;
    if (sid == leaving) continue;
    // A hold it gave (any backend): a revoke without live ends it, and
    // what its holder shared on (RevokeWithoutLive's walk).
    auto via = buffer.imported_via.find(sid);
    if (via != buffer.imported_via.end() && via->second.contains(grant.view.id)) return true;
  }
  return false;
}

void Registry::DropUnreaching(std::vector<uint64_t> grants) {
  for (;;) {
    // Those whose onward DropGrant emptied are looked at again too.
    grants.insert(grants.end(), recheck_.begin(), recheck_.end());
    recheck_.clear();
    if (grants.empty()) return;
    const uint64_t g = grants.back();
    grants.pop_back();
    auto it = grants_.find(g);
    if (it == grants_.end() || !it->second.token.empty() || it->second.rooted ||
        Reaches(it->second)) {
      continue;
    }
    DropGrant(g);  // nothing onward (Reaches): its routes are looked at again
  }
}

void Registry::DropGrant(uint64_t grant_id) {
  auto it = grants_.find(grant_id);
  if (it == grants_.end()) return;
  const GrantRecord& grant = it->second;
  if (auto n = uid_grants_.find(grant.charged_uid); n != uid_grants_.end()) {
    if (!grant.rooted) --n->second.onward;
    if (--n->second.open == 0) uid_grants_.erase(n);
  }
  if (!grant.token.empty()) grant_tokens_.erase(grant.token);
  if (auto b = buffers_.find(grant.view.buffer_id); b != buffers_.end()) {
    b->second->grants.erase(grant_id);
    // Nothing can revoke them any more (Revoke took them first if it did).
    b->second->let_go_views.erase(grant_id);
  }
  if (auto h = holdings_.find(grant.from_session); h != holdings_.end()) {
    h->second.grants.erase(grant_id);
    if (auto of = h->second.grants_by_buffer.find(grant.view.buffer_id);
        of != h->second.grants_by_buffer.end()) {
      of->second.erase(grant_id);
      if (of->second.empty()) h->second.grants_by_buffer.erase(of);
    }
  }
  for (const auto& [g, gave] : grant.via) {
    if (auto through = grants_.find(g); through != grants_.end()) {
      through->second.onward.erase(grant_id);
      // A kept grant left with nothing onward may reach no one now.
      if (through->second.token.empty() && through->second.onward.empty()) recheck_.push_back(g);
    }
  }
  grants_.erase(it);
}

}  // namespace halloc
