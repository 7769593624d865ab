#include "service/peer_identity.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/util/clock.h"
#include "service/util/id_map.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5
#endif

namespace halloc {

UniqueFd PeerPidfd(int conn, pid_t pid) {
  int raw = -1;
  socklen_t len = sizeof(raw);
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &raw, &len) == 0 && raw >= 0) {
    return UniqueFd(raw);
  }
  // Only a kernel without the option (before 6.5) is asked by pid. Where
  // the option is known, a failure means the peer is gone (EINVAL or ESRCH
  // for one already reaped) or unknown (ENODATA): its pid may be
  // another process's by now, which pidfd_open would pin instead.
  if (errno != ENOPROTOOPT) return UniqueFd();
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

absl::StatusOr<ChargedPeer> PinAndCharge(int conn, const ucred& cred,
                                         const SubordinateUids& subordinate, bool look_at_maps) {
  UniqueFd pidfd = PeerPidfd(conn, cred.pid);
  if (const int err = errno; !pidfd && (err == EMFILE || err == ENFILE)) {
    return absl::ResourceExhaustedError(absl::StrCat("out of fds for the pidfd of pid ", cred.pid,
                                                     " (uid ", cred.uid,
                                                     "): ", std::strerror(err)));
  }
  absl::StatusOr<uid_t> charged = ChargedUid(pidfd.get(), cred.pid, cred.uid, subordinate);
  if (!charged.ok()) return charged.status();
  const std::optional<uint64_t> start = ProcessStart(pidfd.get(), cred.pid);
  static const uid_t self = ::geteuid();
  // One of hallocd's uid's subordinate uids is that uid's own container's
  // (whatever /proc shows of it); other namespaces are looked at.
  const bool maps_self =
      look_at_maps && self != 0 &&
      (HallocdsSubordinate(subordinate, cred.uid) || MapsUid(pidfd.get(), cred.pid, self));
  return ChargedPeer{std::move(pidfd), *charged, start, maps_self};
}

namespace {

// Numeric field `field` (numbered as proc(5) numbers them, from 1; 3 and
// up) of /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold
// spaces and parentheses, so the fields are counted from the last ')'.
std::optional<uint64_t> StatField(pid_t pid, int field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(close + 1), ' ', absl::SkipEmpty());
  const size_t at = static_cast<size_t>(field - 3);  // fields[0] is field 3 (state)
  uint64_t value = 0;
  if (field < 3 || fields.size() <= at || !absl::SimpleAtoi(fields[at], &value)) {
    return std::nullopt;
  }
  return value;
}

// hallocd's own user namespace, read once (a process with threads cannot
// unshare another).
const std::optional<FileId>& OwnUserNamespace() {
  static const std::optional<FileId> ours = FileIdOf("/proc/self/ns/user");
  return ours;
}

}  // namespace

ExeSample SampleExe(int pidfd, pid_t pid) {
  ExeSample s;
  const std::string link = absl::StrCat("/proc/", pid, "/exe");
  char buf[4096];
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n > 0) s.path.assign(buf, static_cast<size_t>(n));
  std::optional<FileId> file = FileIdOf(link);
  if (pidfd < 0) return s;
  static const std::optional<FileId> our_pid_ns = FileIdOf("/proc/self/ns/pid");
  const std::optional<FileId> pid_ns = FileIdOf(absl::StrCat("/proc/", pid, "/ns/pid"));
  if (!our_pid_ns || pid_ns != our_pid_ns) return s;
  // Read after the exe: a process leaves hallocd's user namespace for good
  // (unshare), so one seen in it now was in it when its exe was read. (Its
  // exe may still have been set by a CLONE_VM sibling that left: see the
  // header.)
  const std::optional<FileId> user_ns = FileIdOf(absl::StrCat("/proc/", pid, "/ns/user"));
  if (!OwnUserNamespace() || user_ns != OwnUserNamespace()) return s;
  if (!StillRunning(pidfd)) return s;  // exited: cannot vouch for it
  s.file = file;
  return s;
}

bool MapsUid(int pidfd, pid_t pid, uid_t uid) {
  const std::optional<FileId>& ours = OwnUserNamespace();
  const std::string ns = absl::StrCat("/proc/", pid, "/ns/user");
  struct stat st;
  if (!ours || pidfd < 0) return true;
  if (::stat(ns.c_str(), &st) != 0) {
    // Closed to this process (ptrace rules; ENOENT where /proc hides
    // others' processes, hidepid=, ProtectProc=): another uid's, in a
    // namespace neither `uid` nor one it made (whose owner may look in):
    // none that maps it but one root made. Otherwise gone, or cannot tell.
    const bool closed = errno == EACCES || errno == EPERM || errno == ENOENT;
    return !(closed && ::geteuid() == uid && StillRunning(pidfd));
  }
  const FileId theirs{st.st_dev, st.st_ino};
  if (theirs == *ours) return !StillRunning(pidfd);
  const absl::StatusOr<IdMap> map = ReadUidMap(pid);
  // Read while it ran, in the namespace looked at: its map, not a reuser's.
  // A map not written yet (empty) may come to name it: cannot tell.
  if (!map.ok() || map->extents().empty() || !StillRunning(pidfd) || FileIdOf(ns) != theirs) {
    return true;
  }
  return std::any_of(map->extents().begin(), map->extents().end(), [uid](const IdMap::Extent& e) {
    return e.outside != IdMap::kUnnamed && uid >= e.outside && uid - e.outside < e.count;
  });
}

bool SubordinateOf(const SubordinateUids& ranges, uid_t uid, uid_t owner,
                   absl::string_view owner_name) {
  if (owner == 0) return false;
  const std::optional<SubordinateUids::Slice> slice = ranges.SliceOf(uid);
  if (!slice) return false;
  const std::string& named = slice->range->owner;
  return named == absl::StrCat(owner) || (!owner_name.empty() && named == owner_name);
}

bool HallocdsSubordinate(const SubordinateUids& ranges, uid_t uid) {
  static const uid_t self = ::geteuid();
  static const std::string* const name = [] {
    struct passwd pw, *found = nullptr;
    char buf[4096];
    return new std::string(
        ::getpwuid_r(self, &pw, buf, sizeof(buf), &found) == 0 && found ? found->pw_name : "");
  }();
  return SubordinateOf(ranges, uid, self, *name);
}

bool UnprivilegedUserNamespaces() {
  // "0\n" (or "0") in a sysctl file that exists says no.
  const auto zero = [](const char* path) {
    std::ifstream in(path);
    std::string v;
    return in && (in >> v) && v == "0";
  };
  return !zero("/proc/sys/kernel/unprivileged_userns_clone") &&
         !zero("/proc/sys/user/max_user_namespaces");
}

absl::StatusOr<uid_t> ChargedUid(int pidfd, pid_t pid, uid_t uid,
                                 const SubordinateUids& subordinate) {
  const std::optional<FileId>& ours = OwnUserNamespace();
  static const uid_t self = ::getuid();
  // Out of fds or memory, nothing can be told: not charged as itself.
  const auto cannot_look = [pid](int err) -> absl::StatusOr<uid_t> {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot tell whose pid ", pid, " is (its user namespace): ", std::strerror(err)));
  };
  const auto exhausted = [](int err) { return err == EMFILE || err == ENFILE || err == ENOMEM; };
  // Held open to the end: its inode number is not another's meanwhile.
  const UniqueFd peer_ns(
      ::open(absl::StrCat("/proc/", pid, "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
  const int open_err = errno;
  // Opened while the pinned process ran: its namespace, not a pid reuser's.
  if (!StillRunning(pidfd)) {
    return absl::NotFoundError(absl::StrCat("pid ", pid, " exited"));
  }
  if (!peer_ns && exhausted(open_err)) return cannot_look(open_err);
  if (!peer_ns || !ours) return uid;  // not ours to look at (another user's)
  // Up from the peer's namespace to ours (user namespaces nest at most 32
  // deep), keeping the topmost owner that is neither root nor hallocd's
  // own uid: a container's namespaces belong to root, and the uids they
  // map are charged as the container (ContainerCharged), not as root's
  // (which limits spare).
  std::optional<uid_t> owner_charged;
  int owner_depth = -1;  // of the namespace it owns
  UniqueFd above, below;  // held while `ns` and `prev` refer to them
  int ns = peer_ns.get();
  int prev = -1;  // the namespace the last step came from
  for (int depth = 0; depth <= 32; ++depth) {
    struct stat st;
    if (::fstat(ns, &st) != 0) return uid;
    if (FileId{st.st_dev, st.st_ino} == *ours) {
      if (!owner_charged) {  // ours: itself; root's all the way: a container's
        return depth == 0 ? uid
                          : ContainerCharged(pidfd, pid, peer_ns.get(), prev, uid, subordinate);
      }
      // A user's namespace right below ours: that user.
      if (owner_depth == depth - 1) return *owner_charged;
      // One further down was made by a uid that a root-owned namespace
      // above it maps (a container's uid that unshared one of its own):
      // charged as that container (`prev`, right below ours), or it would
      // be a uid apart for each of its uids: by the map another process
      // of it shows (NamespaceRoot), refused when none can.
      return RootCharged(prev, pid, *owner_charged, subordinate, /*unknown_refused=*/true);
    }
    uid_t owner = 0;  // as a uid of ours
    if (::ioctl(ns, NS_GET_OWNER_UID, &owner) == 0 && owner != 0 && owner != self) {
      owner_charged = owner;
      owner_depth = depth;
    }
    UniqueFd parent(::ioctl(ns, NS_GET_PARENT));
    if (!parent && exhausted(errno)) return cannot_look(errno);
    if (!parent) return uid;  // not below ours
    below = std::move(above);  // `ns`'s, unless it is peer_ns
    prev = ns;
    above = std::move(parent);
    ns = above.get();
  }
  return uid;
}

absl::StatusOr<uid_t> ContainerCharged(int pidfd, pid_t pid, int peer_ns, int container_ns,
                                       uid_t uid, const SubordinateUids& subordinate) {
  struct stat peer, container;
  if (::fstat(peer_ns, &peer) != 0 || ::fstat(container_ns, &container) != 0) {
    return SliceCharged(uid, subordinate);
  }
  // Below the container's namespace, all made by root (as a uid of ours:
  // not a container's uid): the container's map, else by slice.
  if (FileId{peer.st_dev, peer.st_ino} != FileId{container.st_dev, container.st_ino}) {
    return RootCharged(container_ns, pid, uid, subordinate, /*unknown_refused=*/false);
  }
  // Right in the container's namespace: its own map is that namespace's
  // (read from hallocd's: outside uids are hallocd's).
  const absl::StatusOr<IdMap> map = ReadUidMap(pid);
  if (absl::IsResourceExhausted(map.status())) {
    return Prefixed(map.status(), absl::StrCat("cannot tell whose pid ", pid, " is (its uid map)"));
  }
  // The map read was its namespace's when the process is in it still: a
  // process only ever moves to a namespace below one it was in (setns
  // needs CAP_SYS_ADMIN over the target; a container's process has none
  // over its container's namespace once it left it), so it never left.
  const std::optional<FileId> now = FileIdOf(absl::StrCat("/proc/", pid, "/ns/user"));
  if (!StillRunning(pidfd)) return absl::NotFoundError(absl::StrCat("pid ", pid, " exited"));
  if (now == FileId{peer.st_dev, peer.st_ino}) {
    if (!map.ok() || map->extents().empty()) return SliceCharged(uid, subordinate);  // unwritten
    // For its namespace's other processes, those below it included.
    RememberNamespaceRoot(container_ns, *map);
    return ChargeOfMap(*map).value_or(SliceCharged(uid, subordinate));
  }
  // Gone on below after ChargedUid looked (a namespace of its own, as a
  // container's uid that unshared): the container's map, from another of
  // its processes.
  return RootCharged(container_ns, pid, uid, subordinate, /*unknown_refused=*/true);
}

absl::StatusOr<uid_t> RootCharged(int ns, pid_t pid, uid_t uid, const SubordinateUids& subordinate,
                                  bool unknown_refused) {
  absl::StatusOr<std::optional<uid_t>> root = NamespaceRoot(ns, pid);
  if (absl::IsResourceExhausted(root.status())) return root.status();
  if (root.ok()) return *root ? **root : SliceCharged(uid, subordinate);
  if (!unknown_refused) return SliceCharged(uid, subordinate);
  // Whose it is cannot be told: not charged as a uid of its choosing (a
  // container's uid that made a namespace of its own) nor as another
  // container's slice.
  return absl::PermissionDeniedError(
      absl::StrCat("cannot tell whose uid ", uid, " is: ", root.status().message(),
                   "; connect from the container's own namespace, or while a process is in it"));
}

std::optional<uid_t> ChargeOfMap(const IdMap& map) {
  static const uid_t self = ::getuid();
  const auto ours = [](std::optional<uid_t> u) { return u && *u != 0 && *u != self; };
  const std::optional<uid_t> root = map.ToOutside(0);
  if (root) return ours(root) ? root : std::nullopt;  // root's own: a host's, not a container
  // No root mapped: the container's lowest uid.
  std::optional<uid_t> lowest;
  for (const IdMap::Extent& e : map.extents()) {
    if (e.outside != IdMap::kUnnamed && (!lowest || e.outside < *lowest)) lowest = e.outside;
  }
  return ours(lowest) ? lowest : std::nullopt;
}

namespace {

// How many namespaces' charges NamespaceRoot remembers (the least lately
// asked for forgotten first; an fd each, of kHallocdOwnFds): root-owned
// namespaces are made by root (container managers), not by those who
// connect, and a container's own processes tell its map again whenever
// they connect; one forgotten costs its nested processes a look among
// their ancestors.
constexpr size_t kKnownNamespaceRoots = 64;
// How soon NamespaceRoot looks through /proc again for a process of a
// namespace none was found in: a second, twice as long each time after,
// up to a minute (a look through 10,000 processes took ~70 ms here).
constexpr absl::Duration kLookAgain = absl::Seconds(1);
constexpr absl::Duration kLookAgainAtMost = absl::Seconds(64);
// How many of a process's ancestors are looked at first.
constexpr int kAncestors = 16;

// What NamespaceRoot remembers: the namespace (its fd held, so that its
// inode number is no other's meanwhile) and the charge its map gives, by
// inode number.
struct KnownRoot {
  UniqueFd ns;
  bool read = false;                         // its map was read
  std::optional<uid_t> charge;               // ChargeOfMap, once read
  absl::Time look_after = absl::InfinitePast();  // unread: not before then again
  absl::Duration wait = kLookAgain;              // the next look_after's
  uint64_t used = 0;                         // Known().asked when last asked
  // Once read, when it gives a charge: the uids of hallocd's that its map
  // gives the container as a block of its own (first and last of each
  // such extent: KnownContainerCharge), and when (Known().asked then).
  std::vector<std::pair<uint64_t, uint64_t>> names;
  uint64_t read_at = 0;
};
struct KnownRoots {
  absl::Mutex mu;
  absl::flat_hash_map<FileId, KnownRoot> roots ABSL_GUARDED_BY(mu);
  uint64_t asked ABSL_GUARDED_BY(mu) = 0;
};
KnownRoots& Known() {
  static KnownRoots* const known = new KnownRoots;  // never destroyed
  return *known;
}

// The entry for namespace `ns` (`id`), made if new (nullptr when out of
// fds to hold it), forgetting the least lately asked about past
// kKnownNamespaceRoots.
KnownRoot* Entry(KnownRoots& known, int ns, const FileId& id)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(known.mu) {
  if (auto it = known.roots.find(id); it != known.roots.end()) {
    it->second.used = known.asked;
    return &it->second;
  }
  UniqueFd held(::fcntl(ns, F_DUPFD_CLOEXEC, 0));
  if (!held) return nullptr;
  if (known.roots.size() >= kKnownNamespaceRoots) {
    auto oldest = known.roots.begin();
    for (auto it = known.roots.begin(); it != known.roots.end(); ++it) {
      if (it->second.used < oldest->second.used) oldest = it;
    }
    known.roots.erase(oldest);
  }
  KnownRoot& entry = known.roots[id];
  entry.ns = std::move(held);
  entry.used = known.asked;
  return &entry;
}

std::optional<FileId> IdOf(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino};
}

// The parent of process `pid` (/proc/<pid>/stat's ppid), or 0.
pid_t ParentPid(pid_t pid) {
  constexpr int kPpid = 4;
  return static_cast<pid_t>(StatField(pid, kPpid).value_or(0));
}

// The map of namespace `id` (one right below hallocd's, whose processes'
// maps read from hallocd's show hallocd's uids) if process `pid` is in it
// and still is after the read (a process only ever leaves a namespace for
// one below it: it was in it throughout, unless its pid went to another
// process in between).
absl::StatusOr<std::optional<IdMap>> MapIfIn(pid_t pid, const FileId& id) {
  const std::string ns = absl::StrCat("/proc/", pid, "/ns/user");
  if (FileIdOf(ns) != id) return std::optional<IdMap>();
  absl::StatusOr<IdMap> map = ReadUidMap(pid);
  if (absl::IsResourceExhausted(map.status())) return map.status();
  if (!map.ok() || map->extents().empty() || FileIdOf(ns) != id) return std::optional<IdMap>();
  return std::optional<IdMap>(*std::move(map));
}

// The map of namespace `id`, from a process in it: first among `near`'s
// ancestors (a container's init, usually), then any in /proc. nullopt
// when none is.
absl::StatusOr<std::optional<IdMap>> MapOfAProcessIn(const FileId& id, pid_t near) {
  for (int i = 0; i < kAncestors && near > 1; ++i) {
    near = ParentPid(near);
    if (near <= 1) break;
    absl::StatusOr<std::optional<IdMap>> map = MapIfIn(near, id);
    if (!map.ok() || *map) return map;
  }
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) {
    return errno == EMFILE || errno == ENFILE || errno == ENOMEM
               ? ErrnoStatus(errno, "opendir /proc")
               : absl::StatusOr<std::optional<IdMap>>(std::nullopt);
  }
  while (const dirent* e = ::readdir(proc.get())) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 0) continue;
    absl::StatusOr<std::optional<IdMap>> map = MapIfIn(pid, id);
    if (!map.ok() || *map) return map;
  }
  return std::optional<IdMap>();
}

}  // namespace

absl::StatusOr<std::optional<uid_t>> NamespaceRoot(int ns, pid_t near) {
  const std::optional<FileId> id = IdOf(ns);
  if (!id) return ErrnoStatus(errno, "fstat a user namespace");
  KnownRoots& known = Known();
  const auto none = [] {
    return absl::UnavailableError(
        "no process is in its container's user namespace to tell whose "
        "that is (its uid map)");
  };
  {
    absl::MutexLock lock(&known.mu);
    ++known.asked;
    KnownRoot* entry = Entry(known, ns, *id);
    if (entry && entry->read) return entry->charge;
    const absl::Time now = MonotonicNow();
    if (entry && now < entry->look_after) return none();
    if (entry) {  // this look's: others wait until then
      entry->look_after = now + entry->wait;
      entry->wait = std::min(entry->wait * 2, kLookAgainAtMost);
    }
  }
  // Not under the lock: a look through /proc takes a while.
  ASSIGN_OR_RETURN(const std::optional<IdMap> map, MapOfAProcessIn(*id, near));
  if (!map) return none();
  RememberNamespaceRoot(ns, *map);
  return ChargeOfMap(*map);
}

void RememberNamespaceRoot(int ns, const IdMap& map) {
  const std::optional<FileId> id = IdOf(ns);
  if (!id || map.extents().empty()) return;
  KnownRoots& known = Known();
  absl::MutexLock lock(&known.mu);
  ++known.asked;
  KnownRoot* entry = Entry(known, ns, *id);
  if (entry == nullptr || entry->read) return;  // a map once written never changes
  entry->read = true;
  entry->charge = ChargeOfMap(map);
  if (!entry->charge) return;
  entry->read_at = known.asked;
  for (const IdMap::Extent& e : map.extents()) {
    // Not a host's uid shared into the container (LXC's `lxc.idmap = u
    // 1000 1000 1`, LXD's raw.idmap, nspawn's --bind-user: one uid, or
    // uids mapped to themselves): their owners connect from the host too.
    if (e.outside == IdMap::kUnnamed || e.count < 2 || e.inside == e.outside) continue;
    const uint64_t last =
        std::min<uint64_t>(uint64_t{e.outside} + e.count - 1, IdMap::kUnnamed - 1);
    entry->names.emplace_back(e.outside, last);
  }
}

std::optional<uid_t> KnownContainerCharge(uid_t uid) {
  KnownRoots& known = Known();
  absl::MutexLock lock(&known.mu);
  const KnownRoot* newest = nullptr;
  for (const auto& [id, root] : known.roots) {
    if (!root.charge || (newest != nullptr && newest->read_at > root.read_at)) continue;
    for (const auto& [first, last] : root.names) {
      if (first <= uid && uid <= last) {
        newest = &root;
        break;
      }
    }
  }
  return newest != nullptr ? newest->charge : std::nullopt;
}

void ForgetNamespaceRoots() {
  KnownRoots& known = Known();
  absl::MutexLock lock(&known.mu);
  known.roots.clear();
}

uid_t SliceCharged(uid_t uid, const SubordinateUids& subordinate) {
  static const uid_t self = ::getuid();
  const std::optional<SubordinateUids::Slice> slice = subordinate.SliceOf(uid);
  return slice && slice->first != 0 && slice->first != self ? slice->first : uid;
}

std::optional<uint64_t> ProcessStart(int pidfd, pid_t pid) {
  if (pidfd < 0 || pid <= 0) return std::nullopt;
  constexpr int kStartTime = 22;
  const std::optional<uint64_t> start = StatField(pid, kStartTime);
  if (!start || !StillRunning(pidfd)) return std::nullopt;  // the pid may be another's now
  return start;
}

std::optional<std::pair<uid_t, gid_t>> EffectiveIds(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  // "Uid:\t<real>\t<effective>\t<saved>\t<fs>", and "Gid:" alike.
  const auto effective = [](absl::string_view line) -> std::optional<uint32_t> {
    const std::vector<absl::string_view> f = absl::StrSplit(line, '\t', absl::SkipEmpty());
    uint32_t v = 0;
    if (f.size() < 3 || !absl::SimpleAtoi(f[2], &v)) return std::nullopt;
    return v;
  };
  for (std::string line; (!uid || !gid) && std::getline(in, line);) {
    // The status is the thread-group leader's: once it exited (a zombie
    // while other threads run on), its ids say nothing of theirs.
    if (absl::StartsWith(line, "State:\tZ") || absl::StartsWith(line, "State:\tX")) {
      return std::nullopt;
    }
    if (absl::StartsWith(line, "Uid:")) uid = effective(line);
    if (absl::StartsWith(line, "Gid:")) gid = effective(line);
  }
  if (!uid || !gid) return std::nullopt;
  return std::pair{*uid, *gid};
}

bool StillRunning(int pidfd) {
  if (pidfd < 0) return false;
  pollfd pfd{pidfd, POLLIN, 0};
  return ::poll(&pfd, 1, 0) == 0;  // a pidfd turns readable at exit
}

Identity RequestIdentity(const Identity& session, const ucred& sender, int pidfd,
                         bool exe_matters) {
  // Another process on the session's socket is judged by its own uid and
  // gid but pays as the connection does (holding the socket is holding the
  // session): subordinate uids sharing one user's socket are that user.
  const Identity others = OtherProcess(session, sender);
  // (pid 0: a process in a pid namespace hallocd cannot see into; any
  // number of them stamp 0.)
  if (sender.pid != session.pid || sender.pid == 0) return others;
  // The session's identity, its executable only where it can matter.
  Identity id = session;
  if (!exe_matters) id.exe_file.reset();
  // From the session's pid: its process, or one that took the pid over
  // after it exited. The latter gains nothing it does not have when the
  // stamp's uid and gid are the session's and no executable is claimed;
  // otherwise the process is looked at. Still the verified file (an exec
  // keeps the pid and the pidfd, not the file), then still the process
  // that connected: the file first, so that a process found running after
  // it was the one whose file was read.
  const bool same_ids = sender.uid == session.uid && sender.gid == session.gid;
  if (same_ids && !id.exe_file) return id;
  if (id.exe_file && FileIdOf(absl::StrCat("/proc/", session.pid, "/exe")) != id.exe_file) {
    return others;
  }
  // Stamped with other ids (the real ones) than the session's (effective,
  // at connect): a setuid or setgid program still running with the
  // session's effective ids is the session; one that changed them since
  // (dropped its privileges in place) is what it is now, as its fork is.
  if (!same_ids && EffectiveIds(session.pid) != std::pair{session.uid, session.gid}) {
    return others;
  }
  return StillRunning(pidfd) ? id : others;
}

Identity OtherProcess(const Identity& session, const ucred& sender) {
  // Taken as in the connector's namespace: it reads the same socket.
  return Identity{sender.uid,
                  sender.gid,
                  sender.pid,
                  "",
                  std::nullopt,
                  session.account_uid,
                  session.maps_hallocd_uid};
}

}  // namespace halloc
