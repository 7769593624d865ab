#include "service/util/last_reference.h"

#include <fcntl.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <glog/logging.h>

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

size_t WatchesPerInstance() {
  size_t queued = 0;
  std::ifstream in("/proc/sys/fs/inotify/max_queued_events");
  if (!(in >> queued) || queued < 4) queued = kDefaultQueuedEvents;
  // Two events per watch, and one slot to spare for IN_Q_OVERFLOW itself.
  return (queued - 1) / 2;
}

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(2);
  return *limiter;
}

}  // namespace

LastReferenceWatch::LastReferenceWatch(size_t watches_per_instance)
    : per_instance_(watches_per_instance != 0 ? watches_per_instance
                                              : WatchesPerInstance()) {
  // The first instance now, so that hallocd's fds do not grow by one at
  // its first release; more only while a burst needs them (DrainLocked).
  absl::MutexLock lock(&mu_);
  if (UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)); fd) {
    instances_.push_back(Instance{std::move(fd)});
  }
}

LastReferenceWatch::Instance* LastReferenceWatch::RoomLocked() {
  for (Instance& instance : instances_) {
    if (instance.watches < per_instance_) return &instance;
  }
  if (instances_.size() >= kMaxInstances) return nullptr;
  UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd) return nullptr;
  instances_.push_back(Instance{std::move(fd)});
  return &instances_.back();
}

int LastReferenceWatch::WatchLocked(int fd, uint64_t token) {
  Instance* instance = RoomLocked();
  if (instance == nullptr) return ENOSPC;
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  const int wd = ::inotify_add_watch(instance->fd.get(), path, IN_DELETE_SELF);
  if (wd < 0) return errno;
  auto [it, fresh] = instance->tokens.try_emplace(wd);
  it->second.push_back(token);
  if (fresh) ++instance->watches;
  ++following_;
  return 0;
}

void LastReferenceWatch::Follow(int fd, uint64_t token) {
  absl::MutexLock lock(&mu_);
  int err = waiting_.empty() ? WatchLocked(fd, token) : ENOSPC;
  if (err == ENOSPC) {
    // Full: events read now may free room (for those waiting first).
    DrainLocked();
    if (waiting_.empty()) err = WatchLocked(fd, token);
  }
  if (err == 0) return;
  // Out of room (or of kernel memory for watches): hold the memory with an
  // fd of our own, so it stays charged, until a watch can be added. Any
  // other error would never pass (no /proc, no such fd): say it is gone.
  const bool later = err == ENOSPC || err == ENOMEM || err == EMFILE || err == ENFILE;
  if (later && fd >= 0) {
    if (UniqueFd held(::fcntl(fd, F_DUPFD_CLOEXEC, 0)); held) {
      waiting_.push_back({std::move(held), token});
      if (uint64_t dropped; Limiter().Allow("last_reference_wait", &dropped)) {
        LOG(WARNING) << "cannot follow released memory yet (" << std::strerror(err)
                     << "): held, and charged, until it can be"
                     << LogLimiter::Dropped(dropped);
      }
      return;
    }
    err = errno;
  }
  ++unwatched_;
  gone_.push_back(token);
  if (uint64_t dropped; Limiter().Allow("last_reference", &dropped)) {
    LOG(WARNING) << "cannot follow released memory (" << std::strerror(err)
                 << "): its charge is returned at once"
                 << LogLimiter::Dropped(dropped);
  }
}

void LastReferenceWatch::DrainLocked() {
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
        auto it = instance.tokens.find(event->wd);
        if (event->mask & (IN_DELETE_SELF | IN_IGNORED)) {
          if (it != instance.tokens.end()) {
            following_ -= it->second.size();
            gone_.insert(gone_.end(), it->second.begin(), it->second.end());
            instance.tokens.erase(it);
          }
        }
        if (event->mask & IN_IGNORED) --instance.watches;
      }
    }
  }
  // Memory held for want of room gets its watch now, oldest first; the
  // held fd closes (the watch does not keep the memory).
  while (!waiting_.empty()) {
    const auto& [held, token] = waiting_.front();
    const int err = WatchLocked(held.get(), token);
    if (err == ENOSPC || err == ENOMEM) break;  // still no room
    if (err != 0) {  // would never pass
      ++unwatched_;
      gone_.push_back(token);
    }
    waiting_.pop_front();
  }
  // Instances past the first go once empty: their fds were for a burst.
  while (instances_.size() > 1 && instances_.back().watches == 0 &&
         instances_.back().tokens.empty()) {
    instances_.pop_back();
  }
}

std::vector<uint64_t> LastReferenceWatch::TakeGone() {
  absl::MutexLock lock(&mu_);
  DrainLocked();
  std::vector<uint64_t> gone;
  gone.swap(gone_);
  return gone;
}

size_t LastReferenceWatch::following() const {
  absl::MutexLock lock(&mu_);
  return following_;
}

size_t LastReferenceWatch::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_.size();
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
