// What the broker learns about the process at the other end of a
// connection, from the kernel alone: a pidfd that pins it, and the file it
// executes (device and inode), vouched for only while that pidfd shows the
// process alive.
#ifndef HALLOC_SERVICE_PEER_IDENTITY_H_
#define HALLOC_SERVICE_PEER_IDENTITY_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/policy/policy.h"
#include "service/util/id_map.h"
#include "service/util/subordinate_uids.h"

namespace halloc {

// A pidfd pinning the peer of the connected socket `conn`: from the socket
// where the kernel offers it (Linux 6.5+ SO_PEERPIDFD: the process that
// connected, race-free), else by `pid` (only kernels without the option:
// races a pid reused between connect and here). Invalid, errno saying why,
// when neither works (EMFILE: this process is out of fds), and when the
// option says the peer is gone.
UniqueFd PeerPidfd(int conn, pid_t pid);

struct ExeSample {
  std::string path;            // for logs; "" when unreadable
  std::optional<FileId> file;  // vouched for: see SampleExe
};

// Which file `pid` executes: the path for logs, and the file (device and
// inode of /proc/<pid>/exe, i.e. the binary itself whatever mount namespace
// or path it was run from). The file is vouched for only when `pidfd` (the
// same process, pinned earlier) shows it still alive afterwards, so that a
// pid reused by another process cannot lend its binary; never without a
// pidfd (-1); and never for a process in another pid namespace than
// hallocd's: whoever holds CAP_SYS_ADMIN over a pid namespace (anyone, in
// an unprivileged user namespace) may stamp SCM_CREDENTIALS with any pid
// of it, so another process there could answer the handshake for one that
// exec'd a trusted binary. Nor for a process in another user namespace
// than hallocd's: CAP_SYS_ADMIN there (anyone's, after
// unshare(CLONE_NEWUSER)) lets it point its own /proc/P/exe at any file it
// may open (prctl PR_SET_MM_MAP's exe_fd) without running it. Such peers
// are judged by uid and gid alone.
//
// That check is not a boundary, only the plainest case refused:
// /proc/P/exe is the memory map's, not the task's, and a CLONE_VM sibling
// of P (its own thread group, so free to unshare a user namespace while
// sharing P's map) may set it for P and exit, P never leaving hallocd's
// namespaces (reproduced). Where unprivileged users may create user
// namespaces (UnprivilegedUserNamespaces), any process can so pass for
// any binary it can open: an exe rule holds against other uids only with
// uids or gids beside it (hallocd warns at load: ExeRulesOpenToAnyUid).
ExeSample SampleExe(int pidfd, pid_t pid);

// Whether a process without privilege may create a user namespace here:
// not where Debian's kernel.unprivileged_userns_clone is 0 or
// user.max_user_namespaces is 0; otherwise (as Debian 12 ships) yes.
bool UnprivilegedUserNamespaces();

// The uid that pays for the connection of `pid` (pinned by `pidfd`), whose
// SO_PEERCRED uid is `uid`: `uid` itself for a process in hallocd's own
// user namespace; for one in a namespace below it, the uid (in hallocd's)
// that owns the topmost namespace between them, unless that is root or
// hallocd's own uid. A container's namespaces belong to root: the uids
// they map are charged as the container (ContainerCharged). A namespace
// a container's uid made (not right below hallocd's, made by a uid a
// root-owned one maps) is charged as that container too (RootCharged of
// the namespace right below hallocd's): its owner would be a uid apart
// for each of the container's uids. PERMISSION_DENIED when that cannot
// be told (no process left in the container's namespace).
// Connection, fd and slow-lane
// limits are charged to it: a user with subordinate uids (newuidmap:
// 65,536 on a Debian login), or a container's root switching among its
// uids, would otherwise appear as that many uids and fill every limit
// meant to share hallocd among users. `uid` when it cannot look (another
// user's process, to a hallocd not run as root).
// NOT_FOUND when the process is gone (nothing to serve: a connection left
// behind by a process that exited must not be charged to a uid of its
// choosing); RESOURCE_EXHAUSTED when hallocd is out of fds or memory to
// look with (charged as itself, a subordinate uid would dodge its owner's
// limits: the connection is refused instead).
absl::StatusOr<uid_t> ChargedUid(int pidfd, pid_t pid, uid_t uid,
                                 const SubordinateUids& subordinate);
// Whether `pid` (pinned by `pidfd`) is in a user namespace other than
// hallocd's whose uid_map (as hallocd reads it: outside uids are its own)
// names `uid`: privileged there, the process acts as `uid`'s owner on
// `uid`'s files (CAP_FOWNER, CAP_DAC_OVERRIDE over an inode its namespace
// maps). A namespace mapping none of it cannot make one below that does,
// and joining another takes privilege over it: the namespace it is in
// when looked at tells. A process whose /proc files are closed to hallocd
// running as `uid` is in no namespace `uid` made: false. When it cannot
// be told (no pidfd, gone, a map not written yet): true.
bool MapsUid(int pidfd, pid_t pid, uid_t uid);
// Whether `uid` is one of `owner`'s subordinate uids (a range of `ranges`
// whose owner names `owner`, by number or by `owner_name`): a process of
// it is one of `owner`'s own containers' (newuidmap maps a user's own
// ranges and no other), whatever hallocd may see of it in /proc (a
// non-dumpable process, one in a namespace below the one that maps
// `owner`). Never for root: root's ranges are other containers'.
bool SubordinateOf(const SubordinateUids& ranges, uid_t uid, uid_t owner,
                   absl::string_view owner_name);
// SubordinateOf hallocd's own (non-root) euid, its name looked up once.
bool HallocdsSubordinate(const SubordinateUids& ranges, uid_t uid);
// What ChargedUid charges a process of root's namespaces (a container's)
// as, `pid` pinned by `pidfd`, SO_PEERCRED uid `uid`, in the user
// namespace `peer_ns` (held open) when ChargedUid looked, below hallocd's
// through `container_ns` (the one right below it, held open; may be
// peer_ns): the charge the container's map gives (ChargeOfMap), one a
// container whatever its block of uids (Podman's --userns=auto, LXD's
// idmap sizes) and whichever file the block came from; else
// SliceCharged. A process right in the container's namespace has its
// /proc/<pid>/uid_map read (and remembered for the namespace:
// RememberNamespaceRoot); one below it, or gone on below since, the
// container's (RootCharged; refused for one gone below when it cannot be
// told). NOT_FOUND when the process is gone; RESOURCE_EXHAUSTED when out
// of fds or memory to read its map.
absl::StatusOr<uid_t> ContainerCharged(int pidfd, pid_t pid, int peer_ns, int container_ns,
                                       uid_t uid, const SubordinateUids& subordinate);
// The charge a container's map gives: the uid (of hallocd's namespace)
// its root is; with no root mapped, its lowest uid; nullopt when that is
// root or hallocd's own uid (root mapped to root: not a container's).
std::optional<uid_t> ChargeOfMap(const IdMap& map);
// NamespaceRoot's charge of namespace `ns` (right below hallocd's; `pid`
// a process below it), else
// SliceCharged(uid); when NamespaceRoot cannot tell, PERMISSION_DENIED
// if `unknown_refused` (a process a container's uid put below it: its
// own choice of uid, or another container's slice, otherwise), else
// SliceCharged(uid) (all made by root). RESOURCE_EXHAUSTED when out of
// fds or memory.
absl::StatusOr<uid_t> RootCharged(int ns, pid_t pid, uid_t uid, const SubordinateUids& subordinate,
                                  bool unknown_refused);
// The charge (ChargeOfMap) of user namespace `ns`, one right below
// hallocd's, by its uid_map: as a process of it showed it
// (RememberNamespaceRoot), else read from a process found in it: among
// the ancestors of `near` (a process below it, its container's init
// usually), then in /proc (hallocd.service's CAP_SYS_PTRACE lets it see
// every process's namespace); nullopt when its map gives none.
// Remembered per namespace (its fd held: of kHallocdOwnFds) for the 64 last
// asked about. UNAVAILABLE when no process is in it (a container whose
// processes all went below namespaces of their own): looked for again a
// second later at the soonest, twice as long each time after, up to a
// minute, and not under the cache's lock; RESOURCE_EXHAUSTED out of fds
// or memory.
absl::StatusOr<std::optional<uid_t>> NamespaceRoot(int ns, pid_t near = 0);
// Tells NamespaceRoot namespace `ns`'s map (as a process of it showed it:
// ContainerCharged). An empty map (not written yet) tells nothing.
void RememberNamespaceRoot(int ns, const IdMap& map);
// The charge of a container whose map NamespaceRoot remembers and gives
// it `uid` (one of hallocd's) in a block of its own: an extent of more
// than one uid, not mapped to themselves (a uid the map shares from the
// host, whose owner connects from the host too, is none); the newest map
// read when several do (a container manager reuses a removed container's
// uids); nullopt when none does. What a connection's SO_PEERCRED uid
// tells of its container before its process is looked at (ConnectRate's
// first check).
std::optional<uid_t> KnownContainerCharge(uid_t uid);
// For tests: forgets every namespace NamespaceRoot remembers.
void ForgetNamespaceRoots();
// The first uid of `uid`'s slice of `subordinate`'s ranges (unless that
// is root or hallocd's own uid), else `uid`.
uid_t SliceCharged(uid_t uid, const SubordinateUids& subordinate);

// The peer of the connected socket `conn` (SO_PEERCRED `cred`), pinned
// (PeerPidfd) and charged (ChargedUid, by `subordinate`'s ranges), as
// every listener admits one:
// RESOURCE_EXHAUSTED when hallocd is out of fds to pin it or look (the
// connection took the last one: out of fds as accept4 would have been),
// NOT_FOUND when the process is gone. `pidfd` may be invalid (no pidfd
// for it: charged by what can be told without).
// `start`: ProcessStart of the peer.
// `maps_hallocd_uid`: MapsUid(pidfd, pid, hallocd's euid), looked at only
// with `look_at_maps` (a broker connection: sessions hold buffers) and
// for a hallocd that is not root (root's files are root's, and no policy
// binds root).
struct ChargedPeer {
  UniqueFd pidfd;
  uid_t charged;
  std::optional<uint64_t> start;
  bool maps_hallocd_uid = false;
};
absl::StatusOr<ChargedPeer> PinAndCharge(int conn, const ucred& cred,
                                         const SubordinateUids& subordinate,
                                         bool look_at_maps = false);

// When process `pid` (pinned by `pidfd`) started, in clock ticks since
// boot (/proc/<pid>/stat's starttime), vouched for by the pidfd showing it
// still running after the read; nullopt otherwise (no pidfd, pid 0: a
// process in a pid namespace hallocd cannot see into, gone, unreadable).
// A pid and its start name one process: a pid comes round again only
// after its process exited, never within one tick.
std::optional<uint64_t> ProcessStart(int pidfd, pid_t pid);

// The effective uid and gid of process `pid` (/proc/<pid>/status, as
// hallocd's user namespace sees them: its thread-group leader's); nullopt
// if unreadable or once that leader exited (the threads left may have
// other ids). The caller vouches for the pid (a pidfd polled after the
// read).
std::optional<std::pair<uid_t, gid_t>> EffectiveIds(pid_t pid);

// Whether the process `pidfd` pins has not exited (false for -1). A
// verified process's pid is its own only while this holds: after, the pid
// may be reused by any process, one holding the verified socket included.
bool StillRunning(int pidfd);

// Who sent one request on a session's connection. The session's identity
// (`session`, from the handshake) speaks for a record only from its own
// process; anyone else holding the socket (a fork, a receiver of the fd)
// is judged by the record's uid and gid alone (`sender`, SCM_CREDENTIALS).
// Once the session's process has exited its pid may come round again to a
// process holding the socket (`pidfd`, pinning the session's process,
// tells), so a record stamped with that pid but another uid or gid is the
// session's only while that process runs (a poll), and only while its
// effective uid and gid are still the session's (SO_PEERCRED's; a stamp
// names the real ones): a setuid or setgid program, not a process that
// dropped its uid or gid in place since it connected, which is judged by
// the record's as a fork that dropped them would be (/proc/<pid>/status,
// read only for such a record). A verified executable
// speaks only while the verified process still runs it: not once it has
// exited, nor after it exec'd another file (same pid, same pidfd:
// /proc/<pid>/exe tells): a stat and a poll, made only when `exe_matters`
// (the policy in force has rules that match executables); otherwise the
// executable is left unverified for this request, so that a policy
// reloaded meanwhile cannot match it either. Not closed: a process that
// execs a file of its choosing, sends, and execs the verified file again
// before hallocd looks.
Identity RequestIdentity(const Identity& session, const ucred& sender, int pidfd,
                         bool exe_matters);
// Who `sender`, another process than the session's holding its socket or
// token, is: its own uid, gid and pid, no executable, paying as the
// session does.
Identity OtherProcess(const Identity& session, const ucred& sender);

}  // namespace halloc

#endif  // HALLOC_SERVICE_PEER_IDENTITY_H_
