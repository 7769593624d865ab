#include "service/policy/decide.h"

#include <algorithm>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

constexpr absl::string_view kRulePayload = "halloc.dev/deciding-rule";
// What DecidingRule says of a refusal no rule made (DecideRule).
constexpr absl::string_view kNoRule = "(no rule)";

// `status` carrying the name of the rule that decided it.
absl::Status By(absl::string_view rule, absl::Status status) {
  status.SetPayload(kRulePayload, absl::Cord(rule));
  return status;
}

// Why `ask` alone is more than `rule`'s whole quota, if it is: no release
// could make room (RESOURCE_EXHAUSTED, "may succeed later", would be a lie).
std::optional<std::string> WholeQuotaExceeded(const Rule& rule, const AllocateAsk& ask) {
  if (rule.quota_buffers != 0 && ask.count > rule.quota_buffers) {
    return absl::StrCat(ask.count, " buffers exceed quota_buffers ", rule.quota_buffers);
  }
  if (rule.quota_bytes != 0 && ask.count * ask.charged_size > rule.quota_bytes) {
    return absl::StrCat(ask.count, " buffers of ", ask.charged_size, " bytes exceed quota_bytes ",
                        rule.quota_bytes);
  }
  return std::nullopt;
}

// `payer` pays for `d`'s buffers under `rule`.
void SetPayer(const Rule& rule, const Identity& payer, AllocateDecision& d) {
  d.quota_rule = &rule;
  d.quota_uid = payer.charged_uid();
  d.quota_key = QuotaKey(rule.name, d.quota_uid);
  // With a quota, a released buffer stays charged while any fd or mapping
  // of it is left (where the backend can tell).
  d.charge_until_gone = rule.quota_buffers != 0 || rule.quota_bytes != 0;
}

// DecideAllocate's `held`: binds `d` by the holding session's rule.
absl::Status DecideHeld(const Rule* holder_rule, const Identity& holder, const AllocateAsk& ask,
                        AllocateDecision& d) {
  const std::string on = absl::StrCat("Allocate on the socket of a session of uid ", holder.uid,
                                      ", which would hold it and pay for it: ");
  if (holder_rule == nullptr) {
    return By(kNoRule, absl::PermissionDeniedError(absl::StrCat(
                           on, "no rule matches it (nothing would bound what it holds)")));
  }
  const Rule& rule = *holder_rule;
  const CpuAccess cap = rule.max_cpu;
  if ((usage::WantsCpuWrite(ask.usage) && cap != CpuAccess::kReadWrite) ||
      (usage::WantsCpuRead(ask.usage) && cap == CpuAccess::kNone)) {
    return By(rule.name, absl::PermissionDeniedError(
                             absl::StrCat(on, "its rule '", rule.name, "' lets it hold CPU access ",
                                          CpuAccessName(cap), ", less than the usage asks for")));
  }
  if (std::optional<std::string> over = WholeQuotaExceeded(rule, ask)) {
    return By(rule.name,
              absl::PermissionDeniedError(absl::StrCat(on, "its rule '", rule.name, "': ", *over)));
  }
  d.owner_access = Narrower(d.owner_access, cap);
  SetPayer(rule, holder, d);
  return absl::OkStatus();
}

}  // namespace

std::string DecidingRule(const absl::Status& status) {
  absl::optional<absl::Cord> rule = status.GetPayload(kRulePayload);
  return rule ? std::string(*rule) : std::string();
}

absl::StatusOr<const Rule*> DecideRule(const Policy& policy, const Identity& c,
                                       absl::string_view action) {
  if (const Rule* rule = policy.Match(c)) return rule;
  return By(kNoRule,
            absl::PermissionDeniedError(absl::StrCat(
                action, " denied: no rule of policy '", policy.source(), "' matches uid ", c.uid,
                " gid ", c.gid,
                // None for another process on a session's socket.
                // Escaped and cut: up to 4 KiB of the client's choosing.
                c.exe.empty() ? "" : absl::StrCat(" exe '", LogSafe(c.exe, kLoggedPathBytes), "'"),
                // Verified only where a rule names an exe (RequestIdentity).
                c.exe_file || !policy.matches_exe() ? "" : " (executable not verified)",
                " (default deny)")));
}

std::optional<std::vector<std::string>> AttachDevices(const Rule& rule) {
  if (rule.AnyDevice()) return std::nullopt;
  return rule.attach_devices;
}

absl::StatusOr<AllocateDecision> DecideAllocate(const Policy& policy, const Identity& caller,
                                                const AllocateAsk& ask) {
  absl::StatusOr<const Rule*> matched = DecideRule(policy, caller, "Allocate");
  if (!matched.ok()) return matched.status();
  return DecideAllocate(**matched, caller, ask);
}

absl::StatusOr<AllocateDecision> DecideAllocate(const Rule& rule, const Identity& caller,
                                                const AllocateAsk& ask,
                                                std::optional<HeldBy> held) {
  AllocateDecision d;
  auto deny = [&](const std::string& why) {
    return By(rule.name, absl::PermissionDeniedError(
                             absl::StrCat("rule '", rule.name, "' denies Allocate: ", why)));
  };
  if (const uint64_t extra = ask.usage & ~rule.usage_mask; extra != 0) {
    return deny(absl::StrCat("usage ", usage::ToString(extra), " not granted"));
  }
  if (!rule.AllowsHeap(ask.heap)) {
    return deny(absl::StrCat("heap '", ask.heap, "' not granted"));
  }
  if (rule.max_buffer_bytes != 0 && ask.size > rule.max_buffer_bytes) {
    return deny(absl::StrCat(ask.size, " bytes exceeds max_buffer_bytes ",
                             rule.max_buffer_bytes));
  }
  // The payer's whole quota: the caller's, or the holding session's below.
  if (std::optional<std::string> over = held ? std::nullopt : WholeQuotaExceeded(rule, ask)) {
    return deny(*over);
  }
  if ((usage::WantsCpuWrite(ask.usage) && rule.max_cpu != CpuAccess::kReadWrite) ||
      (usage::WantsCpuRead(ask.usage) && rule.max_cpu == CpuAccess::kNone)) {
    return deny(absl::StrCat("usage asks for CPU access beyond max_cpu_access ",
                             CpuAccessName(rule.max_cpu)));
  }
  d.rule = &rule;
  d.owner_access = Narrower(ask.access, rule.max_cpu);
  d.attach = AttachDevices(rule);
  SetPayer(rule, caller, d);
  if (held) {
    if (absl::Status bound = DecideHeld(held->rule, *held->session, ask, d); !bound.ok()) {
      return bound;
    }
  }
  return d;
}

std::string QuotaKey(absl::string_view rule, uid_t uid) {
  return absl::StrCat(rule, "/", uid);
}

std::pair<std::string, uint32_t> SplitQuotaKey(absl::string_view key) {
  const size_t slash = key.rfind('/');
  uint32_t uid = 0;
  if (slash == absl::string_view::npos || !absl::SimpleAtoi(key.substr(slash + 1), &uid)) {
    return {std::string(key), 0};
  }
  return {std::string(key.substr(0, slash)), uid};
}

absl::Status CheckQuota(const Rule& rule, uid_t uid, uint64_t owned_buffers,
                        uint64_t owned_bytes, uint64_t count, uint64_t size) {
  if (rule.quota_buffers != 0 && owned_buffers + count > rule.quota_buffers) {
    return By(rule.name, absl::ResourceExhaustedError(absl::StrCat(
        "rule '", rule.name, "' quota_buffers ", rule.quota_buffers, ": uid ", uid,
        " owns ", owned_buffers, ", asked for ", count, " more")));
  }
  if (rule.quota_bytes != 0 && owned_bytes + count * size > rule.quota_bytes) {
    return By(rule.name, absl::ResourceExhaustedError(absl::StrCat(
        "rule '", rule.name, "' quota_bytes ", rule.quota_bytes, ": uid ", uid, " owns ",
        owned_bytes, " bytes, asked for ", count * size, " more")));
  }
  return absl::OkStatus();
}

absl::Status CheckPeerAsk(const PeerAsk& peer) {
  // No policy holds such a name (so saying so tells nothing of the
  // policy's names); escaped whole, it would make a ~240 KB answer and an
  // AUDIT line as long.
  if (peer.name && peer.name->size() > kMaxClientNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("peer name is ", peer.name->size(),
                                                   " bytes; client names have at most ",
                                                   kMaxClientNameBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<SharePeerDecision> DecideSharePeer(const Policy& policy, const Identity& caller,
                                                  const PeerAsk& peer, uint64_t buffer_id) {
  SharePeerDecision d;
  if (absl::Status bad = CheckPeerAsk(peer); !bad.ok()) return bad;
  absl::StatusOr<const Rule*> matched = DecideRule(policy, caller, "Share");
  if (!matched.ok()) return matched.status();
  d.rule = *matched;
  const Rule& rule = *d.rule;
  auto deny = [&](const std::string& why) {
    return By(rule.name, absl::PermissionDeniedError(absl::StrCat(
                             "rule '", rule.name, "' denies Share of buffer ", buffer_id,
                             ": ", why)));
  };
  if (peer.name) {
    // A name the caller's share_to does not admit is refused alike whether
    // a rule has it or not: the answers would otherwise list the policy's
    // client names to any client that asks.
    d.peer = absl::StrCat("client '", absl::CHexEscape(*peer.name), "'");
    if (!ListAdmits(rule.share_to, *peer.name, ~uid_t{0}, caller.uid)) {
      return deny(absl::StrCat("share_to does not admit ", d.peer));
    }
    d.receiver = policy.Find(*peer.name);
    if (d.receiver == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no client named '", absl::CHexEscape(*peer.name), "' in the policy"));
    }
    return d;
  }
  d.peer = absl::StrCat("uid ", peer.uid);
  bool admitted = ListAdmits(rule.share_to, "", peer.uid, caller.uid);
  for (const std::string& name : rule.share_to) {
    const Rule* r = policy.Find(name);
    admitted |= r != nullptr && std::find(r->uids.begin(), r->uids.end(), peer.uid) != r->uids.end();
  }
  if (!admitted) return deny(absl::StrCat("share_to does not admit ", d.peer));
  return d;
}

absl::StatusOr<CpuAccess> DecideShareRights(const SharePeerDecision& peer, uint64_t buffer_id,
                                            CpuAccess mine, std::optional<CpuAccess> asked) {
  const Rule& rule = *peer.rule;
  auto deny = [&](const std::string& why) {
    return By(rule.name, absl::PermissionDeniedError(absl::StrCat(
                             "rule '", rule.name, "' denies Share of buffer ", buffer_id,
                             ": ", why)));
  };
  const CpuAccess access = asked.value_or(mine);
  if (Wider(access, mine)) {
    return deny(absl::StrCat("CPU access ", CpuAccessName(access),
                             " is more than the caller's own (", CpuAccessName(mine), ")"));
  }
  if (peer.receiver == nullptr) return access;
  if (asked && Wider(access, peer.receiver->max_cpu)) {
    return deny(absl::StrCat("CPU access ", CpuAccessName(access), " is more than ", peer.peer,
                             " may hold (", CpuAccessName(peer.receiver->max_cpu), ")"));
  }
  return Narrower(access, peer.receiver->max_cpu);
}

absl::StatusOr<const Rule*> DecideGrantSharer(const Policy& policy, const Identity& caller,
                                              const GrantView& grant) {
  PeerAsk peer;
  if (!grant.peer_name.empty()) peer.name = grant.peer_name;
  peer.uid = grant.peer_uid;
  absl::StatusOr<SharePeerDecision> to =
      DecideSharePeer(policy, grant.sharer, peer, grant.buffer_id);
  if (DecidingRule(to.status()) == kNoRule) {
    // Said without the sharer's uid, gid and executable, which the "no
    // rule" refusal (written for the sharer) would tell the importer
    // (another user, maybe).
    return By("(sharer has no rule)",
              absl::PermissionDeniedError(absl::StrCat(
                  "grant ", grant.id, " (buffer ", grant.buffer_id,
                  "): its sharer matches no rule of policy '", policy.source(), "' now")));
  }
  if (absl::IsNotFound(to.status())) {
    // The client the grant names is gone from the policy: the grant
    // exists, but no one may import it now.
    return absl::PermissionDeniedError(
        absl::StrCat("grant ", grant.id, " is for client '", absl::CHexEscape(grant.peer_name),
                     "', which policy '", policy.source(), "' no longer has"));
  }
  if (!to.ok()) return to.status();
  const Rule& rule = *to->rule;
  if (peer.name) return &rule;  // DecideImport: the caller must be that client
  absl::StatusOr<const Rule*> importer = DecideRule(policy, caller, "Import");
  if (!importer.ok()) return importer.status();
  if (!ListAdmits(rule.share_to, (*importer)->name, caller.uid, grant.sharer.uid)) {
    return By(rule.name,
              absl::PermissionDeniedError(absl::StrCat(
                  "rule '", rule.name, "' denies Import of grant ", grant.id, " (buffer ",
                  grant.buffer_id, ") by client '", (*importer)->name, "' uid ", caller.uid,
                  ": share_to admits uid ", caller.uid, " only as another client")));
  }
  return &rule;
}

absl::StatusOr<ImportDecision> DecideImport(const Policy& policy, const Identity& caller,
                                            const GrantView& grant) {
  ImportDecision d;
  absl::StatusOr<const Rule*> matched = DecideRule(policy, caller, "Import");
  if (!matched.ok()) return matched.status();
  const Rule& rule = **matched;
  auto deny = [&](const std::string& why) {
    return By(rule.name, absl::PermissionDeniedError(absl::StrCat(
                             "rule '", rule.name, "' denies Import of grant ", grant.id,
                             " (buffer ", grant.buffer_id, "): ", why)));
  };
  if (!grant.peer_name.empty() ? grant.peer_name != rule.name : grant.peer_uid != caller.uid) {
    return deny(absl::StrCat(
        "the grant is for ",
        grant.peer_name.empty() ? absl::StrCat("uid ", grant.peer_uid)
                                : absl::StrCat("client '", grant.peer_name, "'"),
        "; caller is client '", rule.name, "' uid ", caller.uid));
  }
  if (!ListAdmits(rule.receive_from, grant.from_client, grant.from_uid, caller.uid)) {
    return deny(absl::StrCat("receive_from does not admit client '", grant.from_client,
                             "' uid ", grant.from_uid));
  }
  if (grant.explicit_access && Wider(grant.access, rule.max_cpu)) {
    return deny(absl::StrCat("the grant's CPU access ", CpuAccessName(grant.access),
                             " is more than client '", rule.name, "' may hold (",
                             CpuAccessName(rule.max_cpu), ")"));
  }
  d.rule = &rule;
  d.access = Narrower(grant.access, rule.max_cpu);
  d.attach = AttachDevices(rule);
  return d;
}

}  // namespace halloc
