#include "service/unread_fds.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/util/fd_limit.h"

namespace halloc {

uint64_t UnreadFds::DefaultTotal() {
  const uint64_t limit = FdLimit();
  if (limit == 0) return 512;
  return std::max<uint64_t>(limit / 2, 128);
}

uint64_t UnreadFds::DefaultPerUid() { return std::max<uint64_t>(DefaultTotal() / 8, 64); }

uint64_t UnreadFds::Queued(int sock) {
  int bytes = 0;
  if (::ioctl(sock, SIOCOUTQ, &bytes) != 0 || bytes < 0) return 0;
  return static_cast<uint64_t>(bytes);
}

uint64_t UnreadFds::Open(int sock, uid_t uid) {
  absl::MutexLock lock(&mu_);
  const uint64_t handle = next_handle_++;
  conns_.emplace(handle, Conn{sock, uid});
  return handle;
}

bool UnreadFds::Fits(uid_t uid, uint64_t n) const {
  auto it = by_uid_.find(uid);
  const uint64_t mine = it == by_uid_.end() ? 0 : it->second;
  return mine + n <= per_uid_ && total_ + n <= total_limit_;
}

void UnreadFds::Take(Conn& c, uint64_t n) {
  n = std::min(n, c.unread);
  c.unread -= n;
  auto it = by_uid_.find(c.uid);
  if (it != by_uid_.end()) {
    it->second -= std::min(n, it->second);
    if (it->second == 0) by_uid_.erase(it);
  }
  total_ -= std::min(n, total_);
}

void UnreadFds::Trim(Conn& c) {
  if (c.recent.empty()) return;
  const uint64_t queued = Queued(c.sock);
  // The queue holds the latest records; count back from the newest sent
  // while their least footprints fit (one at least, when anything is
  // queued). Pending ones stay, whatever the queue says.
  size_t sent = 0, may_hold = 0;
  uint64_t least = 0;
  bool full = false;
  for (auto it = c.recent.rbegin(); it != c.recent.rend(); ++it) {
    if (it->pending) continue;
    ++sent;
    if (full) continue;
    least += it->bytes + kMinRecordBytes;
    if (least > queued && !(may_hold == 0 && queued > 0)) {
      full = true;
      continue;
    }
    ++may_hold;
  }
  size_t drop = sent - may_hold;
  for (auto it = c.recent.begin(); it != c.recent.end() && drop > 0;) {
    if (it->pending) {
      ++it;
      continue;
    }
    Take(c, it->fds);
    it = c.recent.erase(it);
    --drop;
  }
}

std::deque<UnreadFds::Entry>::iterator UnreadFds::PendingEntry(Conn& c, uint64_t n,
                                                               uint64_t bytes) {
  auto e = std::find_if(c.recent.rbegin(), c.recent.rend(), [&](const Entry& x) {
    return x.pending && x.fds == n && x.bytes == static_cast<uint32_t>(bytes);
  });
  return e == c.recent.rend() ? c.recent.end() : std::next(e).base();
}

void UnreadFds::Refresh(std::optional<uid_t> uid) {
  for (auto& [handle, c] : conns_) {
    if (!uid || c.uid == *uid) Trim(c);
  }
}

absl::Status UnreadFds::Reserve(uint64_t handle, uint64_t n, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(handle);
  if (it == conns_.end() || n == 0) return absl::OkStatus();
  Conn& c = it->second;
  // This connection's own count is one syscall to correct: always first
  // (a client taking 64 buffers a call gets past its share within one
  // kRefreshEvery, reading each reply).
  if (!Fits(c.uid, n)) Trim(c);
  if (!Fits(c.uid, n)) {
    const absl::Time now = now_();
    absl::Time& last = refreshed_.try_emplace(c.uid, absl::InfinitePast()).first->second;
    if (now - last >= kRefreshEvery) {
      last = now;
      Refresh(c.uid);
    }
    if (total_ + n > total_limit_ && now - refreshed_all_ >= kRefreshEvery) {
      refreshed_all_ = now;
      Refresh(std::nullopt);
    }
  }
  if (!Fits(c.uid, n)) {
    auto mine = by_uid_.find(c.uid);
    const uint64_t unread = mine == by_uid_.end() ? 0 : mine->second;
    return absl::ResourceExhaustedError(absl::StrCat(
        unread + n > per_uid_
            ? absl::StrCat(unread, " fds hallocd sent to processes of uid ", c.uid,
                           " are still unread (limit ", per_uid_, ")")
            : absl::StrCat(total_, " fds hallocd sent are still unread (limit ",
                           total_limit_, ")"),
        ": read the broker socket, or close connections that are not read"));
  }
  c.unread += n;
  c.recent.push_back({static_cast<uint16_t>(n), static_cast<uint32_t>(bytes), true});
  by_uid_[c.uid] += n;
  total_ += n;
  return absl::OkStatus();
}

void UnreadFds::Sent(uint64_t handle, uint64_t n, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(handle);
  if (it == conns_.end()) return;
  // Sends on one connection may interleave; pending entries of one size
  // are alike. A sent record goes after every other sent one, as in the
  // socket's queue: a later reservation may have gone out first.
  Conn& c = it->second;
  if (auto e = PendingEntry(c, n, bytes); e != c.recent.end()) {
    Entry sent = *e;
    sent.pending = false;
    c.recent.erase(e);
    c.recent.push_back(sent);
  }
}

void UnreadFds::Unreserve(uint64_t handle, uint64_t n, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = conns_.find(handle);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  auto e = PendingEntry(c, n, bytes);
  if (e == c.recent.end()) return;
  c.recent.erase(e);
  Take(c, n);
}

void UnreadFds::Retire(uint64_t handle, UniqueFd sock) {
  std::function<void()> kept;
  {
    absl::MutexLock lock(&mu_);
    auto it = conns_.find(handle);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    Trim(c);
    if (c.unread == 0) {
      conns_.erase(it);  // `sock` closes
      return;
    }
    c.retired = std::move(sock);
    ++retired_by_uid_[c.uid];
    ++retired_;
    kept = on_retire_;
  }
  if (kept) kept();
}

size_t UnreadFds::Sweep() {
  absl::MutexLock lock(&mu_);
  size_t left = 0;
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn& c = it->second;
    if (!c.retired.is_valid()) {
      ++it;
      continue;
    }
    Trim(c);
    if (c.unread == 0) {
      if (auto r = retired_by_uid_.find(c.uid); r != retired_by_uid_.end() && --r->second == 0) {
        retired_by_uid_.erase(r);
      }
      --retired_;
      conns_.erase(it++);
    } else {
      ++left;
      ++it;
    }
  }
  return left;
}

uint64_t UnreadFds::unread(uid_t uid) const {
  absl::MutexLock lock(&mu_);
  auto it = by_uid_.find(uid);
  return it == by_uid_.end() ? 0 : it->second;
}

uint64_t UnreadFds::total() const {
  absl::MutexLock lock(&mu_);
  return total_;
}

uint32_t UnreadFds::retired(uid_t uid) const {
  absl::MutexLock lock(&mu_);
  auto it = retired_by_uid_.find(uid);
  return it == retired_by_uid_.end() ? 0 : it->second;
}

uint32_t UnreadFds::retired() const {
  absl::MutexLock lock(&mu_);
  return retired_;
}

}  // namespace halloc
