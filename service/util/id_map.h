// A user namespace's uid map (user_namespaces(7)), as /proc/<pid>/uid_map
// shows it to a reader in another namespace: each extent's outside uids
// are uids of the reader's namespace. hallocd reads a container's map to
// charge the container's processes as the uid its root is to hallocd
// (ChargedUid, peer_identity.h): one charge a container, whatever its
// block of uids, and whichever file (or none) the block came from.
#ifndef HALLOC_SERVICE_UTIL_ID_MAP_H_
#define HALLOC_SERVICE_UTIL_ID_MAP_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace halloc {

class IdMap {
 public:
  // What the kernel shows for an outside uid the reader's namespace has no
  // uid for ((uid_t)-1): mapped, but to nothing the reader can name.
  static constexpr uint32_t kUnnamed = 0xffffffffu;

  struct Extent {
    uint32_t inside = 0;
    uint32_t outside = 0;
    uint32_t count = 0;  // > 0; inside + count <= 2^32
  };

  // Parses uid_map (or gid_map) text: "inside outside count" a line,
  // decimal, separated by blanks (the kernel pads each field to 10). At
  // most 340 extents (the kernel's limit since Linux 4.15). An empty text
  // is a map not yet written: no extents. INVALID_ARGUMENT for anything
  // else, so that a map misread never charges a wrong uid.
  static absl::StatusOr<IdMap> Parse(absl::string_view text);

  // The uid of the reader's namespace that `inside` maps to; nullopt when
  // the map does not map it, or maps it to a uid the reader cannot name.
  // The kernel shows an extent's first outside uid as the reader's; the
  // rest are taken to follow it (exact where the reader's namespace maps
  // them in one run, as the initial one does every uid; an extent's
  // first, such as a container root's, is always exact).
  std::optional<uid_t> ToOutside(uid_t inside) const;

  const std::vector<Extent>& extents() const { return extents_; }

 private:
  std::vector<Extent> extents_;
};

// /proc/<pid>/uid_map, as this process reads it. NOT_FOUND when there is
// no such process; RESOURCE_EXHAUSTED when out of fds or memory to read
// it; INVALID_ARGUMENT when it does not parse.
absl::StatusOr<IdMap> ReadUidMap(pid_t pid);

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_ID_MAP_H_
