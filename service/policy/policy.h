// The compiled policy: who may allocate what, share with whom, with which
// rights. Immutable once built; the allocator swaps whole policies on
// reload (SIGHUP), so a decision always sees one consistent policy.
#ifndef HALLOC_SERVICE_POLICY_POLICY_H_
#define HALLOC_SERVICE_POLICY_POLICY_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "halloc/v1/policy.pb.h"
#include "service/backend/backend.h"

namespace halloc {

// A file as the kernel knows it: device and inode. Executable rules compare
// these, not paths, so a bind mount over the rule's path in another mount
// namespace, a symlink or a rename cannot stand in for the real binary.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const FileId& o) const { return dev == o.dev && ino == o.ino; }
  bool operator!=(const FileId& o) const { return !(*this == o); }
  template <typename H>
  friend H AbslHashValue(H h, const FileId& f) {
    return H::combine(std::move(h), f.dev, f.ino);
  }
};

// The file at `path` as hallocd sees it (its own mount namespace; symlinks
// followed); nullopt when it cannot be stat'ed. Its filesystem is not
// asked (AT_STATX_DONT_SYNC): a device and inode number do not go stale.
std::optional<FileId> FileIdOf(const std::string& path);

// An executable's path as /proc/<pid>/exe read it, shared, not copied:
// it is up to 4 KiB of the client's choosing and rides in every request's
// Identity (a copy per request left ~4 KB of hallocd's heap behind per
// grant made: the freed copies' holes filled with what the grants keep).
class ExePath {
 public:
  ExePath() = default;
  ExePath(std::string path)  // NOLINT: implicit, as the string it holds
      : path_(path.empty() ? nullptr : std::make_shared<const std::string>(std::move(path))) {}
  ExePath(const char* path) : ExePath(std::string(path)) {}  // NOLINT
  const std::string& str() const;
  operator absl::string_view() const { return str(); }  // NOLINT
  bool empty() const { return path_ == nullptr; }
  friend bool operator==(const ExePath& a, absl::string_view b) { return a.str() == b; }
  friend std::ostream& operator<<(std::ostream& os, const ExePath& p) { return os << p.str(); }

 private:
  std::shared_ptr<const std::string> path_;
};

// Kernel-verified facts about a client process.
struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  // The process's executable as /proc/<pid>/exe reads (for logs and dumps;
  // may contain any byte: escape it before logging).
  ExePath exe;
  // The executable's file, verified by the broker handshake (see
  // proto/halloc/v1/broker.proto). Unset: no rule with `exe` matches.
  std::optional<FileId> exe_file;
  // Whom quotas charge when set (else `uid`): the uid the broker
  // connection is charged to (a user namespace's owner: ChargedUid in
  // service/peer_identity.h), for every request that comes over it,
  // whichever process sent it.
  std::optional<uid_t> account_uid;
  // One of hallocd's own (non-root) uid's containers': one of that uid's
  // subordinate uids (HallocdsSubordinate), or in a user namespace, not
  // hallocd's, whose map names that uid (MapsUid; peer_identity.h).
  // Privileged there, its processes act as that uid's owner on hallocd's
  // files (fchmod a memfd's inode), so a read-only memfd binds them no
  // more than that uid. Set for the connector; another process on its
  // socket is taken as it, or as its own subordinate uid.
  bool maps_hallocd_uid = false;

  uid_t charged_uid() const { return account_uid.value_or(uid); }
};

// A rule's (client's) name: 1 to this many bytes of [a-z0-9_-].
inline constexpr size_t kMaxClientNameBytes = 63;

struct Rule {
  std::string name;
  // Match.
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  std::string exe;
  bool any = false;
  // Grants.
  uint64_t usage_mask = 0;
  std::vector<std::string> heaps;  // may hold "*"
  uint64_t max_buffer_bytes = 0;   // 0: no limit
  uint64_t quota_bytes = 0;        // 0: no limit
  uint64_t quota_buffers = 0;      // 0: no limit
  CpuAccess max_cpu = CpuAccess::kNone;
  std::vector<std::string> attach_devices;
  std::vector<std::string> share_to;      // names, "*", "@same_uid"
  std::vector<std::string> receive_from;  // names, "*", "@same_uid"

  bool Matches(const Identity& id) const;
  bool AllowsHeap(absl::string_view heap) const;
  // Whether attach_devices names "*" (any device), not an allow-list.
  bool AnyDevice() const;
};

// Whether `list` (share_to / receive_from) admits the client `name` whose
// session has uid `uid`, from a client whose session has `self_uid`.
bool ListAdmits(const std::vector<std::string>& list, absl::string_view name,
                uid_t uid, uid_t self_uid);

// sessions.max_per_uid when the policy leaves it 0.
inline constexpr uint32_t kDefaultSessionsPerUid = 256;
// sessions.connects_per_second when the policy leaves it 0.
inline constexpr uint32_t kDefaultConnectsPerSecond = 100;

class Policy {
 public:
  // Parses and validates text-format `text`. Errors carry `source`:line:col
  // (syntax and semantics alike), all of them, one per line.
  static absl::StatusOr<std::shared_ptr<const Policy>> Parse(
      absl::string_view text, absl::string_view source);
  // Who may have written the file Load reads.
  enum class Writer {
    // hallocd's policy: only root or this process's user. The file must be
    // reached through no directory or link another user could swap
    // (util/trusted_path.h), belong to one of them and be writable by no
    // other user nor group but root's (PERMISSION_DENIED otherwise):
    // whoever may change it decides what every client may do.
    kTrusted,
    // A draft anyone may have written (hallocctl policy check): only read.
    kAnyone,
  };
  // Reads and parses `path`, a regular file (FAILED_PRECONDITION for a
  // FIFO, a device or a directory: none may hang or flood the reader) of
  // at most kMaxFileBytes; NOT_FOUND when it does not exist.
  static absl::StatusOr<std::shared_ptr<const Policy>> Load(const std::string& path,
                                                            Writer writer = Writer::kTrusted);
  static constexpr size_t kMaxFileBytes = size_t{1} << 20;
  // The policy without a file: every session is client "default": any
  // usage, any heap, read-write CPU, sharing within its own uid; per uid at
  // most half of the machine's memory (a quarter in one buffer) and
  // DefaultBufferQuota() live buffers. Made at its first use, after
  // hallocd raised its fd limit.
  static std::shared_ptr<const Policy> Default();
  // A quarter of this process's fd limit (at least 1024; 0, no limit, when
  // the limit is infinite): no one uid's live buffers, an fd each in
  // hallocd, may take all the fds hallocd leaves to buffers.
  static uint64_t DefaultBufferQuota();

  // The first rule matching `id`, or nullptr.
  const Rule* Match(const Identity& id) const;
  const Rule* Find(absl::string_view name) const;
  const std::vector<Rule>& rules() const { return rules_; }
  // Whether any rule matches by executable (`exe`): only then does a
  // request's identity need its executable vouched for (RequestIdentity).
  bool matches_exe() const { return matches_exe_; }
  // Whether this policy judges `a` and `b` alike, and charges them alike:
  // what Rule::Matches reads (uid, gid, and the verified executable where
  // a rule names one) and the uid charged are the same in both. False
  // says nothing.
  bool JudgesAlike(const Identity& a, const Identity& b) const {
    return a.uid == b.uid && a.gid == b.gid && a.charged_uid() == b.charged_uid() &&
           (!matches_exe_ || a.exe_file == b.exe_file);
  }
  // The rules that match by executable alone (exe, no uids or gids): where
  // unprivileged users may create user namespaces, any process can pass
  // for a binary it can open (service/peer_identity.h, SampleExe), so such
  // a rule holds against no uid there. hallocd warns of them at load.
  std::vector<std::string> ExeRulesOpenToAnyUid() const;
  // What makes an exe rule match nothing as its path stands now, one line
  // per such rule: no such file (yet: paths are looked up at each
  // decision), not a regular file, or a script ("#!": /proc/P/exe names
  // its interpreter, never the script). Read by hallocd at load (logged)
  // and by `hallocctl policy check`.
  std::vector<std::string> ExeRuleProblems() const;
  // What `backend` cannot do that a rule asks of it, a line per problem: no
  // heap of the rule is this backend (so it allocates nothing here), its
  // max_cpu_access and every narrower right unenforceable, or an
  // attach_devices list and a backend that cannot limit attaching. Such a
  // rule validates, but each Allocate it decides (and each share to or
  // import by its clients, for the last two) fails FAILED_PRECONDITION or
  // PERMISSION_DENIED. Logged by hallocd at load and reload.
  std::vector<std::string> BackendProblems(const Backend& backend) const;
  // Where it came from ("built-in default" or the file path).
  const std::string& source() const { return source_; }
  // SessionLimits as written (0: hallocd's default: kDefaultSessionsPerUid
  // per uid).
  uint32_t max_sessions_per_uid() const { return max_sessions_per_uid_; }
  uint32_t max_sessions() const { return max_sessions_; }
  // sessions.connects_per_second, its default put in.
  uint32_t connects_per_second() const { return connects_per_second_; }

 private:
  std::vector<Rule> rules_;
  std::string source_;
  uint32_t max_sessions_per_uid_ = 0;
  uint32_t max_sessions_ = 0;
  uint32_t connects_per_second_ = kDefaultConnectsPerSecond;
  bool matches_exe_ = false;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_POLICY_POLICY_H_
