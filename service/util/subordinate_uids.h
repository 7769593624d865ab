// Subordinate uid ranges (subuid(5), /etc/subuid): the uids each user may
// map into user namespaces of its own. Where newuidmap(1) takes its ranges
// from this file (not from NSS: nsswitch.conf's `subid:`), a user without
// privilege can connect to hallocd as its own uid and any uid of its
// ranges, and as no other; a root-owned container's uids (LXC, LXD,
// Docker's userns-remap) are often given as root's ranges here too.
// hallocd keys its cheapest check (ConnectRate) by a user's ranges, all
// of them one key, and by the 65,536-uid slices of root's (one a
// container), so that a user's 65,536 subordinate uids are one key there,
// not 65,536. (A container's uids are charged, after, as the uid its root
// is, from its namespace's map: ContainerCharged. By their slice here
// only where that map cannot be read or names no root of the container's
// own.) The
// ranges must not hold login uids (useradd's SUB_UID_MIN, 100000, is
// above its UID_MAX): such a uid is charged as its slice's first, whoever
// else has that uid.
#ifndef HALLOC_SERVICE_UTIL_SUBORDINATE_UIDS_H_
#define HALLOC_SERVICE_UTIL_SUBORDINATE_UIDS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace halloc {

// One file's ranges.
class SubordinateUids {
 public:
  // Uids are keyed in slices of this many from a range's first: a user's
  // usual allotment (useradd's SUB_UID_COUNT), and one container's where a
  // container manager carves a large range of root's into them.
  static constexpr uint32_t kSlice = 65536;

  struct Range {
    uid_t first = 0;
    uint64_t count = 0;  // > 0; first + count <= 2^32
    std::string owner;   // a user name or uid, as the file gives it
    uid_t owner_first = 0;  // the first uid of the lowest range of `owner`
    // Whether root owns it ("root" or "0"): ranges a container manager
    // running as root hands out to its containers, a slice each.
    bool roots() const { return owner == "root" || owner == "0"; }
  };
  // The slice of a range that holds a uid.
  struct Slice {
    uid_t first = 0;
    uint64_t count = 0;
    const Range* range = nullptr;  // valid while the SubordinateUids is
  };

  // Parses subuid(5) text: one "owner:first:count" a line, numbers as
  // shadow-utils reads them (decimal, 0x hex, 0 octal), fields past the
  // third ignored. Blank lines, '#' comments and lines that do not parse
  // (or name no uids) are skipped; a range past the last uid is cut there.
  static SubordinateUids Parse(absl::string_view text);

  // The slice holding `uid`: of the range with the highest first uid at or
  // below it that holds it (ranges may overlap where the file says so).
  // O(log n) but for uids under overlapping ranges. Its `range` is valid
  // until this SubordinateUids changes.
  std::optional<Slice> SliceOf(uid_t uid) const;
  size_t size() const { return ranges_.size(); }

 private:
  std::vector<Range> ranges_;  // by first uid
  // reach_[i]: one past the last uid any of ranges_[0..i] holds.
  std::vector<uint64_t> reach_;
};

// A subuid file, read again when it changes, looked at no more than once a
// `recheck` (so a hot path may ask at every call). Trusted only as root's
// (OpenTrusted: reached through what only root or hallocd's user may
// change, owned by one of them, writable by no one else); a file missing,
// untrusted or unreadable has no ranges (a warning says why, once for
// each new reason). Not thread-safe: one per thread that asks.
class SubordinateUidsFile {
 public:
  explicit SubordinateUidsFile(std::string path, absl::Duration recheck = absl::Seconds(1));

  // The ranges as of `now` (MonotonicNow()'s time).
  const SubordinateUids& At(absl::Time now);
  const std::string& path() const { return path_; }

 private:
  // What identifies one version of the file (no file: all zero).
  struct Version {
    dev_t dev = 0;
    ino_t ino = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    off_t size = 0;
    // A chmod or chown within one tick of the last change (ctime is
    // coarse before Linux 6.13) changes these all the same.
    mode_t mode = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    bool operator==(const Version& o) const {
      return dev == o.dev && ino == o.ino && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns &&
             size == o.size && mode == o.mode && uid == o.uid && gid == o.gid;
    }
  };
  void Reload();

  const std::string path_;
  const absl::Duration recheck_;
  absl::Time checked_ = absl::InfinitePast();
  std::optional<Version> version_;  // nullopt: never looked
  std::string problem_;             // why the last look found no ranges
  SubordinateUids uids_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_SUBORDINATE_UIDS_H_
