// OpenTrusted: opens a path the way a privileged daemon must open what it
// trusts by name (its socket directories, its policy file).
//
// open(2) follows the path as it is at that moment; what matters to hallocd
// is also who could change it afterwards. A user who may rename entries in
// any directory on the way (or owns a link there) can point the path
// elsewhere once hallocd has looked: a link in /tmp that named a root
// directory while hallocd bound its socket there, and the user's own
// directory once clients connect by that path. So the path is walked from
// "/" one component at a time, never following a link blindly, and refused
// where another user could swap a component:
//   - every directory on the way belongs to root or to this process's
//     user (the owner of a directory may rename anything in it);
//   - a directory others may write to (every user, or a group but root's)
//     must have the sticky bit, and the
//     entry taken from it must belong to root or to this process's user
//     (the sticky bit keeps others from renaming entries they do not own);
//   - a symbolic link that passes is followed, its target walked the same
//     way (at most 40 links, then ELOOP);
//   - nothing on the way, nor what is opened, may be on a FUSE file system
//     (its server says who owns what: a user's, mounted with allow_other,
//     may say root).
// Like systemd's chase() with CHASE_SAFE, or OpenSSH's safe_path().
#ifndef HALLOC_SERVICE_UTIL_TRUSTED_PATH_H_
#define HALLOC_SERVICE_UTIL_TRUSTED_PATH_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// Opens `path` (relative ones from the working directory, as getcwd names
// it) with openat(2) `flags` (O_NOFOLLOW and O_CLOEXEC are added): e.g.
// O_PATH | O_DIRECTORY for a directory, O_RDONLY | O_NONBLOCK for a file.
// NOT_FOUND when a component does not exist, FAILED_PRECONDITION (naming the
// component and why) when another user could swap one, the errno's status
// for anything else.
absl::StatusOr<UniqueFd> OpenTrusted(const std::string& path, int flags);

// The two judgements the walk makes, for what it opens (a file's own
// owner and mode): whether this process may trust what `uid` owns (root's
// and its own user's), and whether users other than its owner and root's
// may write to `fd` (any fd, O_PATH too), which `st` describes: every
// user, a group but root's, or, where the group may write, a user or group
// its access ACL names (the mode's group bits are then the ACL's mask,
// which only bounds them; an ACL that cannot be read counts as naming one).
bool TrustedOwner(uid_t uid);
bool OthersMayWrite(int fd, const struct stat& st);

// Makes TrustedOwner count `uid`'s files as this process's own in place of
// its effective uid's (-1: back to that): `hallocctl policy check`, run by
// root, judges as the user hallocd runs as (with that user's filesystem ids
// for the lookups, setfsuid). Set it only while nothing else judges.
void TrustOwnUidAs(int64_t uid);

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_TRUSTED_PATH_H_
