// The compiled policy: who may allocate what, share with whom, with which
// rights. Immutable once built; the allocator swaps whole policies on
// reload (SIGHUP), so a decision always sees one consistent policy.
#ifndef HALLOC_SERVICE_POLICY_POLICY_H_
#define HALLOC_SERVICE_POLICY_POLICY_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "halloc/v1/policy.pb.h"
#include "service/backend/backend.h"

namespace halloc {

// Kernel-verified facts about a client process.
struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  // /proc/<pid>/exe at connect time; empty if unreadable.
  std::string exe;
};

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
};

// Whether `list` (share_to / receive_from) admits the client `name` whose
// session has uid `uid`, from a client whose session has `self_uid`.
bool ListAdmits(const std::vector<std::string>& list, absl::string_view name,
                uid_t uid, uid_t self_uid);

class Policy {
 public:
  // Parses and validates text-format `text`. Errors carry `source`:line:col
  // (syntax and semantics alike), all of them, one per line.
  static absl::StatusOr<std::shared_ptr<const Policy>> Parse(
      absl::string_view text, absl::string_view source);
  static absl::StatusOr<std::shared_ptr<const Policy>> Load(
      const std::string& path);
  // The policy without a file: every session is client "default": any
  // usage, any heap, read-write CPU, sharing within its own uid.
  static std::shared_ptr<const Policy> Default();

  // The first rule matching `id`, or nullptr.
  const Rule* Match(const Identity& id) const;
  const Rule* Find(absl::string_view name) const;
  const std::vector<Rule>& rules() const { return rules_; }
  // Where it came from ("built-in default" or the file path).
  const std::string& source() const { return source_; }

 private:
  std::vector<Rule> rules_;
  std::string source_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_POLICY_POLICY_H_
