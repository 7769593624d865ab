// Learning when the memory behind an fd is gone, i.e. when no fd and no
// mapping of it is left in any process: LastReferenceFollower, and
// LastReferenceWatch, which follows memfds by an event; last_reference_poll.h
// follows dma-bufs by asking.
//
// hallocd charges a buffer to its owner's quota; Release drops hallocd's
// hold, but the client (or whoever it passed the fd to) may keep the fd or
// a mapping, and so the memory. Returning the charge at Release would let a
// client allocate, map, release and repeat without bound. So a released
// buffer's charge is kept until this watch says its memory went.
//
// How: an inotify watch (IN_DELETE_SELF) added through /proc/self/fd/N. A
// memfd's file has no name in any directory (its inode's link count is 0),
// so the kernel reports IN_DELETE_SELF when its dentry dies, which is when
// the last struct file referring to it goes: the last fd, however it was
// duplicated, passed or reopened through /proc, and the last mapping (a
// mapping holds its file): no event while any fd or mapping remains, the
// event at the last munmap or close (last_reference_test on the host's
// kernel, tests/kernel/last_reference_guest_test.cc on Debian's 6.1). This
// holds for shmem files (memfd); a dma-buf's inode keeps a link and its end
// is not reported (the guest test shows it), so only the memfd backends
// have Backend::last_reference() kWatched.
//
// Bounds: one inotify instance queues at most max_queued_events (16384 by
// default) events before it drops them (IN_Q_OVERFLOW). A watch makes two
// events (IN_DELETE_SELF, IN_IGNORED), so an instance here holds at most
// half that many watches, and a dropped event is impossible however late
// the events are read. The first instance is made at construction, more
// on demand up to kMaxInstances; those go again once empty. In all, at
// most half of max_user_watches (a budget hallocd's user shares with its
// other processes: none under the unit, which runs it as user hallocd; a
// root hallocd shares root's with systemd and udev) or kMaxInstances full
// instances, whichever is less. Past that, or when the kernel refuses a
// watch for want of room, the memory is kept with the fd Follow was given
// (so it stays allocated and charged, as if still live: no fd more than
// the buffer had) until a watch can be added: running out of watches never
// lets memory escape its charge. A file its owner made unreadable (a
// client of hallocd's own uid: fchmod 0, so that the watch is refused and
// the charge returned at once while it keeps the memory) is made readable
// by its owner again, hallocd, and watched; refused still (made
// unreadable again meanwhile), it waits as for want of room. Only an
// error no retry would cure (no /proc, no fd) reports it gone at once,
// counted in unwatched().
//
// Fairness: each Follow names a group (hallocd: the owner's uid), and no
// group may take more than 1/kGroupShare of all the watches there can be;
// past its share a group's memory waits (held, as above) for its own
// watches to go. So one uid keeping many released buffers delays only its
// own, never another uid's release being seen.
//
// Thread-safe. Adding a watch costs ~5 µs (the /proc path walk); callers
// keep it off their request path.
#ifndef HALLOC_SERVICE_UTIL_LAST_REFERENCE_H_
#define HALLOC_SERVICE_UTIL_LAST_REFERENCE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// Follows released memory until it is gone. Thread-safe.
class LastReferenceFollower {
 public:
  virtual ~LastReferenceFollower() = default;

  // Follows the memory `fd` refers to for `group`; `token` is reported by
  // TakeGone once it is gone. Takes `fd`, closed (outside any lock:
  // closing may free pages) once the follower no longer needs it.
  virtual void Follow(UniqueFd fd, uint64_t token, uint64_t group = 0) = 0;
  // The tokens whose memory went since the last call, in no set order.
  // Never blocks on anything but a short lock. fds the follower needs no
  // more are handed to `to_close` (a caller holding locks closes them
  // elsewhere: each close may free pages); without it they are closed
  // here, after the lock.
  virtual std::vector<uint64_t> TakeGone(std::vector<UniqueFd>* to_close = nullptr) = 0;
  // Looks again now at what `group` (nullopt: anyone) follows, where
  // looking is work (a poll) rather than an event read by TakeGone: for a
  // caller about to refuse for memory that may be gone. May take a while;
  // call it with no lock held.
  virtual void Refresh(std::optional<uint64_t> group) {}
  // Follow calls that could not follow (reported gone at once) since start.
  virtual uint64_t unwatched() const = 0;
};

class LastReferenceWatch : public LastReferenceFollower {
 public:
  static constexpr size_t kMaxInstances = 16;
  static constexpr size_t kGroupShare = 8;

  // `watches_per_instance` 0: half of /proc/sys/fs/inotify/max_queued_events
  // (less one); `max_watches` 0: as above. Tests pass small numbers.
  explicit LastReferenceWatch(size_t watches_per_instance = 0, size_t max_watches = 0);
  LastReferenceWatch(const LastReferenceWatch&) = delete;
  LastReferenceWatch& operator=(const LastReferenceWatch&) = delete;

  // `fd` is closed once the memory is watched (now), or kept until it can
  // be.
  void Follow(UniqueFd fd, uint64_t token, uint64_t group = 0) override;
  // Kept fds whose memory is watched now go to `to_close`.
  std::vector<uint64_t> TakeGone(std::vector<UniqueFd>* to_close = nullptr) override;

  // Memory watched and not yet known gone.
  size_t following() const;
  // Memory held (an fd each) until there is room to watch it.
  size_t waiting() const;
  uint64_t unwatched() const override;
  // inotify instances (fds) open now.
  size_t instances() const;
  // Most watches in all, and for one group, at once.
  size_t max_watches() const { return total_cap_; }
  size_t group_cap() const { return group_cap_; }

 private:
  struct Followed {
    uint64_t token;
    uint64_t group;
  };
  struct Instance {
    UniqueFd fd;
    size_t watches = 0;  // added and not yet IN_IGNORED
    // wd → what it follows (one memory followed twice shares a wd), until
    // gone.
    absl::flat_hash_map<int, std::vector<Followed>> followed;
  };
  struct Held {
    UniqueFd fd;
    uint64_t token;
  };

  // Reads every instance's events into gone_, then watches what waits
  // (the fds kept for it go to `closing`).
  void DrainLocked(std::vector<UniqueFd>* closing) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An instance with room for one more watch, or nullptr.
  Instance* RoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Watches `fd`: 0, or the errno (ENOSPC: no room, or `group` at its cap).
  int WatchLocked(int fd, const Followed& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t per_instance_;
  const size_t total_cap_;
  const size_t group_cap_;
  mutable absl::Mutex mu_;
  std::vector<Instance> instances_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> gone_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, size_t> watched_by_group_ ABSL_GUARDED_BY(mu_);
  // Per group, what waits for room, oldest first.
  absl::flat_hash_map<uint64_t, std::deque<Held>> waiting_ ABSL_GUARDED_BY(mu_);
  size_t waiting_count_ ABSL_GUARDED_BY(mu_) = 0;
  size_t watches_ ABSL_GUARDED_BY(mu_) = 0;  // over all instances
  size_t following_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t unwatched_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LAST_REFERENCE_H_
