// Policy decisions. The policy decides, the core applies: each Decide*
// takes the compiled policy, the caller's kernel-verified identity and what
// it asks, and returns either what to grant (the deciding rule, the rights
// the fds carry, the quota key to charge) or the refusal. A refusal's status
// names the rule that made it (DecidingRule), so the core can count denials
// per rule without knowing why. The core keeps what only it knows: which
// buffers exist and who holds them, the backend's abilities, the live
// quota use. A new policy field touches only this folder and its tests.
#ifndef HALLOC_SERVICE_POLICY_DECIDE_H_
#define HALLOC_SERVICE_POLICY_DECIDE_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/policy/policy.h"

namespace halloc {

// The rule that refused `status` ("(no rule)" when none matched the
// caller); "" for a status no rule decided.
std::string DecidingRule(const absl::Status& status);

// The rule deciding for `caller`, or PERMISSION_DENIED (default deny).
absl::StatusOr<const Rule*> DecideRule(const Policy& policy, const Identity& caller,
                                       absl::string_view action);

// --- Allocate ----------------------------------------------------------------

struct AllocateAsk {
  uint64_t usage = 0;
  // Of one buffer, as asked (a blob's size, an image layout's), before
  // rounding to pages: what max_buffer_bytes bounds. Quotas count the
  // rounded size (CheckQuota), the memory it takes.
  uint64_t size = 0;
  std::string heap;            // the backend's heap (Backend::name())
  CpuAccess access = CpuAccess::kReadWrite;  // what the usage implies
  // How many such buffers, and what each is charged (rounded to pages):
  // more than the rule's whole quota is refused here (CheckQuota refuses
  // what does not fit beside what the uid owns now).
  uint64_t count = 1;
  uint64_t charged_size = 0;
};

// What a client's buffers are charged to: "rule/uid".
std::string QuotaKey(absl::string_view rule, uid_t uid);
// QuotaKey's parts: (rule, uid); (key, 0) for a key it did not make.
std::pair<std::string, uint32_t> SplitQuotaKey(absl::string_view key);

struct AllocateDecision {
  const Rule* rule = nullptr;
  // The owner's fd rights: the usage's, within the rule's max_cpu_access.
  CpuAccess owner_access = CpuAccess::kNone;
  // Devices the buffers may be attached to; nullopt: any.
  std::optional<std::vector<std::string>> attach;
  // What the buffers are charged to: "rule/uid", whose quota binds them
  // (quota_rule's, uid quota_uid): the caller's own, or that of the
  // session holding them (DecideAllocate's `held`).
  std::string quota_key;
  const Rule* quota_rule = nullptr;
  uid_t quota_uid = 0;
  // Whether the rule has a quota: a released buffer then stays charged
  // while any fd or mapping of it is left (where the backend can tell),
  // else release, map and repeat would hold memory past any quota.
  bool charge_until_gone = false;
};

// The session an Allocate's buffers are held by where another process
// sent it on that session's socket, which another rule than the caller's
// may judge (another uid's session, or one an exe rule vouched for and
// the sender is not).
struct HeldBy {
  const Rule* rule = nullptr;  // the session's; nullptr where none matches it
  const Identity* session = nullptr;
};

absl::StatusOr<AllocateDecision> DecideAllocate(const Policy& policy, const Identity& caller,
                                                const AllocateAsk& ask);
// The same by `rule`, the one DecideRule found for `caller`. With `held`,
// the session holds the buffers, may share them on, and pays for them, so
// the caller's rule's decision is bound by the session's own rule as its
// own Allocate would be:
//  - the owner's rights within that rule's max_cpu_access, narrowed where
//    the usage leaves room;
//  - that rule's quota (not the caller's, which this call is not charged
//    to), on the key the session's own Allocates charge (quota_key,
//    quota_rule, quota_uid, charge_until_gone). Charged as the caller's
//    rule with the session's uid, they were on a key of nobody's own: a
//    quota more for each uid lending its socket to a process another
//    rule judges.
// PERMISSION_DENIED, by the session's rule, where the usage asks for CPU
// access beyond its cap or the call alone is more than its whole quota;
// by no rule where none matches the session (nothing would bound what it
// holds).
absl::StatusOr<AllocateDecision> DecideAllocate(const Rule& rule, const Identity& caller,
                                                const AllocateAsk& ask,
                                                std::optional<HeldBy> held = std::nullopt);

// RESOURCE_EXHAUSTED (naming `rule`) when `count` more buffers of `size`
// bytes would take `uid` past the rule's quotas, given what it owns.
absl::Status CheckQuota(const Rule& rule, uid_t uid, uint64_t owned_buffers,
                        uint64_t owned_bytes, uint64_t count, uint64_t size);

// A rule's attach_devices as fd rights: nullopt when it admits any ("*").
std::optional<std::vector<std::string>> AttachDevices(const Rule& rule);

// --- Share and Import ----------------------------------------------------------

// Who a grant is for: a client by name, or a uid.
struct PeerAsk {
  std::optional<std::string> name;
  uid_t uid = 0;
};

struct SharePeerDecision {
  const Rule* rule = nullptr;      // the sharer's
  const Rule* receiver = nullptr;  // by name only (a uid's rule is known at Import)
  std::string peer;                // "client 'x'" or "uid N", for messages
};

// INVALID_ARGUMENT for a peer no policy could name (a name longer than any
// client's), whatever the caller and its rule: checked before anything
// else of a Share (DecideSharePeer checks it too).
absl::Status CheckPeerAsk(const PeerAsk& peer);

// Whether the caller may share `buffer_id` with `peer` at all (share_to).
// NOT_FOUND for a client name the policy does not know.
absl::StatusOr<SharePeerDecision> DecideSharePeer(const Policy& policy, const Identity& caller,
                                                  const PeerAsk& peer, uint64_t buffer_id);

// The rights of the grant: `asked` (nullopt: the caller's own, narrowed to
// what a named receiver may hold), never more than `mine`; an explicit ask
// beyond a named receiver's max_cpu_access is refused.
absl::StatusOr<CpuAccess> DecideShareRights(const SharePeerDecision& peer, uint64_t buffer_id,
                                            CpuAccess mine, std::optional<CpuAccess> asked);

// A grant as Import sees it.
struct GrantView {
  uint64_t id = 0;
  uint64_t buffer_id = 0;
  std::string peer_name;  // set: for this client; empty: for peer_uid
  uid_t peer_uid = 0;
  std::string from_client;
  uid_t from_uid = 0;
  CpuAccess access = CpuAccess::kRead;
  bool explicit_access = false;
  // The sharer's identity: at each Import its side is judged again
  // (share_to, under the policy in force then).
  Identity sharer;
};

struct ImportDecision {
  const Rule* rule = nullptr;
  CpuAccess access = CpuAccess::kNone;  // the importer's fd rights
  std::optional<std::vector<std::string>> attach;
};

// The sharer's side of `grant` at an Import by `caller`, under the policy
// in force now: the sharer's rule must still let it share with the grant's
// peer (share_to), and a grant to a uid reaches only an importer that
// share_to admits by its rule's name, "*" or "@same_uid" (a named rule
// listing the uid let the grant be made, not every process of that uid).
// Returns the sharer's rule (DecideImport's receive_from sees its name).
absl::StatusOr<const Rule*> DecideGrantSharer(const Policy& policy, const Identity& caller,
                                              const GrantView& grant);

// The importer's side: the grant is for the caller (its client or uid),
// from a client its receive_from admits (`grant.from_client`), within its
// max_cpu_access.
absl::StatusOr<ImportDecision> DecideImport(const Policy& policy, const Identity& caller,
                                            const GrantView& grant);

}  // namespace halloc

#endif  // HALLOC_SERVICE_POLICY_DECIDE_H_
