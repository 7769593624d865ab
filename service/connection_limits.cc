#include "service/connection_limits.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/const_init.h"
#include "absl/hash/hash.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "service/peer_identity.h"

namespace halloc {

namespace {

std::atomic<uint32_t> control_connection_fds{2};

// fds one connection on each socket costs together.
uint64_t PairFds() { return 2 + uint64_t{ControlConnectionFds()}; }

// sessions.max_total's default under fd limit `fd_limit` (0: infinite).
uint32_t MaxConnectionsFor(uint64_t fd_limit) {
  if (fd_limit == 0) return 4096;
  return static_cast<uint32_t>(
      std::min<uint64_t>(std::max<uint64_t>(fd_limit / 2 / PairFds(), 16), UINT32_MAX));
}

}  // namespace

void SetControlConnectionFds(uint32_t fds) {
  control_connection_fds.store(fds, std::memory_order_relaxed);
}

uint32_t ControlConnectionFds() { return control_connection_fds.load(std::memory_order_relaxed); }

uint32_t DefaultMaxConnections() { return MaxConnectionsFor(FdLimit()); }

uint64_t BufferRoom(const Policy& policy, uint64_t fd_limit, uint64_t stock_fds) {
  if (fd_limit == 0) return 0;
  const uint64_t total =
      policy.max_sessions() != 0 ? policy.max_sessions() : MaxConnectionsFor(fd_limit);
  // Both sockets full: a connection on each.
  const uint64_t connections = PairFds() * (total + kAdminConnectionReserve);
  const uint64_t kept = connections + stock_fds + kHallocdOwnFds;
  const uint64_t least = std::max<uint64_t>(fd_limit / 4, 1);
  return fd_limit > kept ? std::max(fd_limit - kept, least) : least;
}

namespace {

ABSL_CONST_INIT absl::Mutex subordinate_file_mu(absl::kConstInit);
std::string& SubordinateFilePath() {
  static std::string* path = new std::string("/etc/subuid");
  return *path;
}

}  // namespace

void SetSubordinateUidFile(std::string path) {
  absl::MutexLock lock(&subordinate_file_mu);
  SubordinateFilePath() = std::move(path);
}

std::string SubordinateUidFile() {
  absl::MutexLock lock(&subordinate_file_mu);
  return SubordinateFilePath();
}

bool IsOperatorUid(uid_t uid) {
  static const uid_t self = ::getuid();  // asked on every accept
  return uid == 0 || uid == self;
}

absl::Status AdmitConnection(const Policy& policy, uid_t uid, ConnectionCounts held,
                             absl::string_view what) {
  const bool admin = IsOperatorUid(uid);
  const uint32_t per_uid = policy.max_sessions_per_uid() != 0
                               ? policy.max_sessions_per_uid()
                               : kDefaultMaxConnectionsPerUid;
  const uint32_t total =
      policy.max_sessions() != 0 ? policy.max_sessions() : DefaultMaxConnections();
  if (!admin && held.of_uid >= per_uid) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", uid, " holds ", held.of_uid, " ", what,
                     "; the limit per uid is ", per_uid, " (policy sessions.max_per_uid)"));
  }
  if (held.total >= total + (admin ? kAdminConnectionReserve : 0)) {
    return absl::ResourceExhaustedError(absl::StrCat("hallocd holds ", held.total, " ", what,
                                                     "; the limit is ", total,
                                                     " (policy sessions.max_total)"));
  }
  return absl::OkStatus();
}

ConnectRate::Limits ConnectRate::Of(const Policy& policy) {
  const uint32_t per_second = std::max<uint32_t>(policy.connects_per_second(), 1);
  const uint32_t per_uid = policy.max_sessions_per_uid() != 0 ? policy.max_sessions_per_uid()
                                                              : kDefaultMaxConnectionsPerUid;
  const uint64_t twice = 2 * uint64_t{per_second};
  return Limits{per_second, static_cast<uint32_t>(std::min<uint64_t>(
                                std::max<uint64_t>(twice, per_uid), UINT32_MAX))};
}

ConnectRate::ConnectRate() : subordinate_(SubordinateUidFile()) {}

namespace {

// A uid's bucket: its own; for a uid of a user's subordinate ranges, that
// user's (every range it has: a range may be far larger than a slice);
// for one of root's ranges (containers'), its slice's. Keys past every
// uid: a slice's first uid above 2^32, an owner's name hashed above 2^63.
uint64_t BucketKey(uid_t uid, const std::optional<SubordinateUids::Slice>& slice) {
  if (!slice) return uid;
  if (slice->range->roots()) return uint64_t{1} << 32 | slice->first;
  return uint64_t{1} << 63 | absl::Hash<std::string>{}(slice->range->owner);
}

// The charge of the container (one whose map hallocd has read) whose own
// block holds `uid` (KnownContainerCharge: not a uid shared from the
// host), for uids past the host's local ones: below 65536 (systemd's
// UIDS-GIDS convention: containers' blocks start above) even a range an
// idmap shares keeps each uid its own bucket.
std::optional<uid_t> ContainerOf(uid_t uid) {
  constexpr uid_t kFirstContainerUid = 65536;
  return uid >= kFirstContainerUid ? KnownContainerCharge(uid) : std::nullopt;
}

}  // namespace

uint64_t ConnectRate::BucketOf(uid_t uid, absl::Time now) {
  if (const std::optional<uid_t> container = ContainerOf(uid)) return *container;
  return BucketKey(uid, subordinate_.At(now).SliceOf(uid));
}

uid_t ConnectRate::RefusedAs(uid_t uid, absl::Time now) {
  if (const std::optional<uid_t> container = ContainerOf(uid)) return *container;
  const std::optional<SubordinateUids::Slice> slice = subordinate_.At(now).SliceOf(uid);
  if (!slice) return uid;
  const uid_t as = slice->range->roots() ? slice->first : slice->range->owner_first;
  return IsOperatorUid(as) ? uid : as;
}

bool ConnectRate::SameBucket(uid_t a, uid_t b, absl::Time now) {
  return a == b || BucketOf(a, now) == BucketOf(b, now);
}

absl::Status ConnectRate::Admit(Limits limits, uid_t uid, absl::Time now, absl::string_view what,
                                absl::Duration* retry_after) {
  if (IsOperatorUid(uid)) return absl::OkStatus();
  limits.per_second = std::max<uint32_t>(limits.per_second, 1);
  limits.burst = std::max<uint32_t>(limits.burst, 1);
  const double per_second = limits.per_second, burst = limits.burst;
  if (buckets_.size() >= sweep_at_) {
    Sweep(limits, now);
    sweep_at_ = std::max<size_t>(64, 2 * buckets_.size());
  }
  const std::optional<uid_t> container = ContainerOf(uid);
  const std::optional<SubordinateUids::Slice> slice =
      container ? std::nullopt : subordinate_.At(now).SliceOf(uid);
  auto [it, fresh] =
      buckets_.try_emplace(container ? *container : BucketKey(uid, slice), Bucket{burst, now});
  Bucket& b = it->second;
  if (!fresh && now > b.at) b.Refill(now, per_second, burst);
  if (b.tokens < 1) {
    if (retry_after != nullptr) *retry_after = absl::Seconds((1 - b.tokens) / per_second);
    // The file is root's to write (SubordinateUidsFile), escaped all the same.
    std::string shared;
    if (container) {
      shared = absl::StrCat(" (with every uid of the container whose root is uid ", *container,
                            ", rated as one)");
    } else if (slice && slice->range->roots()) {
      shared = absl::StrCat(" (with the uids ", slice->first, "-", slice->first + slice->count - 1,
                            " of a range of root's in ", absl::CHexEscape(subordinate_.path()),
                            ", rated as one)");
    } else if (slice) {
      shared = absl::StrCat(" (with every uid of the ranges of \"",
                            absl::CHexEscape(slice->range->owner), "\" in ",
                            absl::CHexEscape(subordinate_.path()), ", rated as one)");
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "uid ", uid, shared, " opens ", what, " faster than ", limits.per_second,
        " a second (bursts of ", limits.burst, "; policy sessions.connects_per_second)"));
  }
  b.tokens -= 1;
  return absl::OkStatus();
}

void ConnectRate::Sweep(const Limits& limits, absl::Time now) {
  const double per_second = limits.per_second, burst = limits.burst;
  absl::erase_if(buckets_, [&](const auto& entry) {
    return entry.second.Level(now, per_second, burst) >= burst;
  });
}

}  // namespace halloc
