#include "service/util/last_reference.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

// The kernel's default, should /proc not say.
constexpr size_t kDefaultQueuedEvents = 16384;

// The number in /proc file `path`, or 0 when it cannot be read.
size_t ProcNumber(const char* path) {
  size_t n = 0;
  std::ifstream in(path);
  return (in >> n) ? n : 0;
}

size_t WatchesPerInstance() {
  size_t queued = ProcNumber("/proc/sys/fs/inotify/max_queued_events");
  if (queued < 4) queued = kDefaultQueuedEvents;
  // Two events per watch, and one slot to spare for IN_Q_OVERFLOW itself.
  return (queued - 1) / 2;
}

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(2);
  return *limiter;
}

}  // namespace

LastReferenceWatch::LastReferenceWatch(size_t watches_per_instance, size_t max_watches)
    : per_instance_(watches_per_instance != 0 ? watches_per_instance
                                              : WatchesPerInstance()),
      total_cap_([&] {
        if (max_watches != 0) return max_watches;
        const size_t all = kMaxInstances * per_instance_;
        // What the kernel lets this process's user watch in all.
        const size_t user = ProcNumber("/proc/sys/fs/inotify/max_user_watches");
        // Half the user's budget: hallocd shares it (root's, with systemd
        // and udev).
        return user == 0 ? all : std::max<size_t>(1, std::min(all, user / 2));
      }()),
      group_cap_(std::max<size_t>(1, total_cap_ / kGroupShare)) {
  // The first instance now, so that hallocd's fds do not grow by one at
  // its first release; more only while a burst needs them (DrainLocked).
  absl::MutexLock lock(&mu_);
  if (UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)); fd) {
    instances_.push_back(Instance{std::move(fd)});
  }
}

LastReferenceWatch::Instance* LastReferenceWatch::RoomLocked() {
  if (watches_ >= total_cap_) return nullptr;
  for (Instance& instance : instances_) {
    if (instance.watches < per_instance_) return &instance;
  }
  if (instances_.size() >= kMaxInstances) return nullptr;
  UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd) return nullptr;
  instances_.push_back(Instance{std::move(fd)});
  return &instances_.back();
}

namespace {

// Errors a later try may not meet: the memory waits for it, charged.
bool Retried(int err) { return err == ENOSPC || err == ENOMEM || err == EACCES; }

// Makes the file `fd` is readable by its owner, which hallocd is (it made
// its memfds): true if it was made so now, false if it already was (the
// refusal is then for another reason, a file not ours) or cannot be.
bool OwnerMayRead(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || (st.st_mode & S_IRUSR) != 0) return false;
  return ::fchmod(fd, (st.st_mode & 07777) | S_IRUSR) == 0;
}

}  // namespace

int LastReferenceWatch::WatchLocked(int fd, const Followed& what) {
  if (auto g = watched_by_group_.find(what.group);
      g != watched_by_group_.end() && g->second >= group_cap_) {
    return ENOSPC;  // the group's share is taken
  }
  Instance* instance = RoomLocked();
  if (instance == nullptr) return ENOSPC;
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  int wd = ::inotify_add_watch(instance->fd.get(), path, IN_DELETE_SELF);
  // A watch needs read permission on the inode, and a holder that owns it
  // as hallocd does (hallocd's own uid, or a user namespace mapping it)
  // may have taken that away (fchmod 0) to have its charge returned at
  // once while it keeps the memory. hallocd owns the file: readable by its
  // owner again, then watched.
  if (wd < 0 && errno == EACCES) {
    if (!OwnerMayRead(fd)) return EACCES;
    wd = ::inotify_add_watch(instance->fd.get(), path, IN_DELETE_SELF);
  }
  if (wd < 0) return errno;
  auto [it, fresh] = instance->followed.try_emplace(wd);
  it->second.push_back(what);
  if (fresh) {
    ++instance->watches;
    ++watches_;
  }
  ++watched_by_group_[what.group];
  ++following_;
  return 0;
}

void LastReferenceWatch::Follow(UniqueFd fd, uint64_t token, uint64_t group) {
  // Declared before the lock, so destroyed after it: closing may free pages.
  std::vector<UniqueFd> closing;
  absl::MutexLock lock(&mu_);
  const Followed what{token, group};
  // A group's memory is watched in the order it came: none before what
  // already waits. Whatever waits gets its chance first.
  const bool drained = waiting_count_ > 0;
  if (drained) DrainLocked(&closing);
  int err = waiting_.contains(group) ? ENOSPC : WatchLocked(fd.get(), what);
  if (err == ENOSPC && !drained) {
    // Full: events read now may free room.
    DrainLocked(&closing);
    err = WatchLocked(fd.get(), what);
  }
  if (err == 0) {
    closing.push_back(std::move(fd));
    return;
  }
  if (Retried(err) && fd) {
    // Out of room (or its mode taken away again at once: EACCES): kept,
    // with its memory and its charge, until it can be watched.
    waiting_[group].push_back({std::move(fd), token});
    ++waiting_count_;
    if (uint64_t dropped; Limiter().Allow("last_reference_wait", &dropped)) {
      LOG(WARNING) << "cannot follow released memory yet (" << std::strerror(err)
                   << "): kept, and charged, until it can be"
                   << LogLimiter::Dropped(dropped);
    }
    return;
  }
  // An error no retry would cure (no /proc, no fd).
  ++unwatched_;
  gone_.push_back(token);
  closing.push_back(std::move(fd));
  if (uint64_t dropped; Limiter().Allow("last_reference", &dropped)) {
    LOG(WARNING) << "cannot follow released memory (" << std::strerror(err)
                 << "): its charge is returned at once"
                 << LogLimiter::Dropped(dropped);
  }
}

void LastReferenceWatch::DrainLocked(std::vector<UniqueFd>* closing) {
  alignas(inotify_event) char buf[4096];
  for (Instance& instance : instances_) {
    if (instance.watches == 0) continue;
    for (;;) {
      const ssize_t n = ::read(instance.fd.get(), buf, sizeof(buf));
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        break;  // EAGAIN: nothing more
      }
      for (ssize_t at = 0; at < n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buf + at);
        at += sizeof(inotify_event) + event->len;
        if (event->mask & IN_Q_OVERFLOW) {
          // Cannot happen with per_instance_ watches; should it, the
          // charges stay (safe side) and the log says so.
          LOG(ERROR) << "inotify queue overflowed: released memory may stay charged";
          continue;
        }
        if (event->mask & (IN_DELETE_SELF | IN_IGNORED)) {
          if (auto it = instance.followed.find(event->wd); it != instance.followed.end()) {
            for (const Followed& f : it->second) {
              gone_.push_back(f.token);
              if (auto g = watched_by_group_.find(f.group);
                  g != watched_by_group_.end() && --g->second == 0) {
                watched_by_group_.erase(g);
              }
            }
            following_ -= it->second.size();
            instance.followed.erase(it);
          }
        }
        if (event->mask & IN_IGNORED) {
          --instance.watches;
          --watches_;
        }
      }
    }
  }
  // Memory held for want of room gets its watch now, each group's oldest
  // first; the held fd closes (the watch does not keep the memory).
  std::vector<uint64_t> emptied;
  for (auto& [group, queue] : waiting_) {
    while (!queue.empty()) {
      const int err = WatchLocked(queue.front().fd.get(), {queue.front().token, group});
      if (Retried(err)) break;  // still no room
      if (err != 0) {  // would never pass
        ++unwatched_;
        gone_.push_back(queue.front().token);
      }
      closing->push_back(std::move(queue.front().fd));
      queue.pop_front();
      --waiting_count_;
    }
    if (queue.empty()) emptied.push_back(group);
  }
  for (uint64_t group : emptied) waiting_.erase(group);
  // Instances past the first go once empty: their fds were for a burst.
  while (instances_.size() > 1 && instances_.back().watches == 0 &&
         instances_.back().followed.empty()) {
    instances_.pop_back();
  }
}

std::vector<uint64_t> LastReferenceWatch::TakeGone(std::vector<UniqueFd>* to_close) {
  std::vector<UniqueFd> closing;  // closed after the lock unless handed out
  std::vector<uint64_t> gone;
  {
    absl::MutexLock lock(&mu_);
    DrainLocked(to_close != nullptr ? to_close : &closing);
    gone.swap(gone_);
  }
  return gone;
}

size_t LastReferenceWatch::following() const {
  absl::MutexLock lock(&mu_);
  return following_;
}

size_t LastReferenceWatch::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_count_;
}

size_t LastReferenceWatch::instances() const {
  absl::MutexLock lock(&mu_);
  return instances_.size();
}

uint64_t LastReferenceWatch::unwatched() const {
  absl::MutexLock lock(&mu_);
  return unwatched_;
}

}  // namespace halloc
