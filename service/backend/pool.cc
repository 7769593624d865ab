#include "service/backend/pool.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/util/clock.h"
#include "service/util/cpu_follower.h"

namespace halloc {
namespace {

// How often an idle refill thread looks for idle classes to trim.
constexpr absl::Duration kTrimPeriod = absl::Seconds(1);
// Pause after a failed refill (out of memory or fds) before trying again.
constexpr absl::Duration kFailureBackoff = absl::Milliseconds(100);
// A class whose refill failed is tried again after a second, then twice as
// long each time in a row, up to 16 s (its requests are misses meanwhile).
constexpr absl::Duration kClassFailureBackoff = absl::Seconds(1);
constexpr absl::Duration kClassFailureBackoffAtMost = absl::Seconds(16);
// After the stock was freed for a request short of room: no refill for
// this long, or the refill would take the room back at once (and the
// next such request free it again).
constexpr absl::Duration kRoomPause = absl::Seconds(5);
// The nice value of the refill thread that works beside a lone client.
constexpr int kBesideClientNice = 19;
// How much of a buffer that thread commits (allocates) before it yields.
constexpr uint64_t kYieldingCommitPiece = uint64_t{1} << 20;

// BackendRequest::attach_drivers as part of a class key: "" when absent,
// else one NUL-terminated entry per driver (so an empty list differs too).
std::string DriversKey(const std::optional<std::vector<std::string>>& drivers) {
  if (!drivers.has_value()) return "";
  std::string key = "=";
  for (const std::string& d : *drivers) absl::StrAppend(&key, d, std::string(1, '\0'));
  return key;
}

// DriversKey's inverse, for any list (an empty name too: none is dropped,
// or the class would never be found again).
std::optional<std::vector<std::string>> DriversFromKey(absl::string_view key) {
  if (key.empty()) return std::nullopt;
  std::vector<std::string> drivers = absl::StrSplit(key.substr(1), '\0');
  drivers.pop_back();  // after the last terminator
  return drivers;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PooledBackend>> PooledBackend::Create(
    std::unique_ptr<Backend> inner, PoolOptions options) {
  if (inner == nullptr) return absl::InvalidArgumentError("pool: no backend");
  if (options.max_per_class == 0 || options.max_classes == 0) {
    return absl::InvalidArgumentError(
        "pool: max_per_class and max_classes must be > 0");
  }
  std::unique_ptr<PooledBackend> pool(
      new PooledBackend(std::move(inner), options));
  if (options.background && options.max_bytes > 0) {
    PooledBackend* p = pool.get();
    p->threads_.emplace_back([p] { p->Run(Refiller::kIdle); });
    if (options.serving_cpu != nullptr) {
      p->threads_.emplace_back([p] { p->Run(Refiller::kBesideClient); });
    }
  }
  return pool;
}

PooledBackend::PooledBackend(std::unique_ptr<Backend> inner,
                             PoolOptions options)
    : inner_(std::move(inner)), options_(options) {}

PooledBackend::~PooledBackend() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    for (absl::CondVar& cv : wake_) cv.SignalAll();
    stopping_.SignalAll();
  }
  for (std::thread& t : threads_) t.join();
}

absl::StatusOr<UniqueFd> PooledBackend::Make(const BackendRequest& request,
                                              bool yield) const {
  ASSIGN_OR_RETURN(UniqueFd fd, inner_->Allocate(request));
  if (!options_.commit) return fd;
  const uint64_t piece = yield ? kYieldingCommitPiece : request.size;
  for (uint64_t offset = 0; offset < request.size; offset += piece) {
    if (offset > 0) ::sched_yield();
    const uint64_t length = std::min(piece, request.size - offset);
    int r;
    do {
      r = ::fallocate(fd.get(), 0, static_cast<off_t>(offset), static_cast<off_t>(length));
    } while (r != 0 && errno == EINTR);
    if (r != 0) {
      return ErrnoStatus(errno, absl::StrCat("fallocate(", request.size, ")"));
    }
  }
  return fd;
}

uint64_t PooledBackend::Target(uint64_t size) const {
  // No class holds more than class_bytes: buffers larger than that are not
  // stocked at all (at one each, a client asking for them now and then
  // would hold nearly all of max_bytes, uncharged, and starve the rest).
  const uint64_t n = options_.class_bytes / std::max<uint64_t>(size, 1);
  return std::min<uint64_t>(n, options_.max_per_class);
}

absl::StatusOr<UniqueFd> PooledBackend::Allocate(
    const BackendRequest& request) {
  std::deque<UniqueFd> forgotten;  // closed after the lock is dropped
  UniqueFd fd;
  // Never wait for mu_: a refill thread (idle priority, or nice 19) that a
  // busy CPU preempted while holding it may not run again for as long as
  // anyone keeps the CPUs busy, and every allocation would wait that long.
  // A holder that is running lets go within a few tries; otherwise this
  // request makes its buffer itself, as a miss does.
  if (TryLockBriefly()) {
    fd = TakeLocked(request, forgotten);
    mu_.Unlock();
  } else {
    contended_.fetch_add(1, std::memory_order_relaxed);
  }
  if (fd) return fd;
  absl::StatusOr<UniqueFd> made = Make(request);
  // Short of memory or fds (a memory cgroup's limit, RLIMIT_NOFILE), with
  // a stock that holds both and is charged to no client: it goes before a
  // request does, where it holds the room asked for (not for a request
  // that could never fit). Once: a failure beside an empty stock is the
  // answer.
  if (absl::IsResourceExhausted(made.status()) &&
      stocked_bytes_.load(std::memory_order_relaxed) >= request.size &&
      FreeStock(request.size) > 0) {
    trims_for_room_.fetch_add(1, std::memory_order_relaxed);
    // FreeStock paused the refills, so that none takes the room back
    // before this request does.
    made = Make(request);
    // It made room: no refill takes it back for a while either (and the
    // next such request frees stock again). Where it did not, what was
    // freed was no help and the stock comes back as before: one failing
    // request does not keep every class empty.
    if (!made.ok()) {
      absl::MutexLock lock(&mu_);
      room_pause_until_ = absl::InfinitePast();
    }
  }
  return made;
}

bool PooledBackend::TryLockBriefly() {
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kLockTries; ++i) {
      if (mu_.TryLock()) return true;
    }
    // The holder may be a refill thread this one preempted on its CPU: let
    // it finish (a busy CPU bounds this wait by one time slice).
    if (round == 0) ::sched_yield();
  }
  return false;
}

UniqueFd PooledBackend::TakeLocked(const BackendRequest& request,
                                   std::deque<UniqueFd>& forgotten) {
  ClassKey key{request.size, request.name, request.usage,
               DriversKey(request.attach_drivers)};
  auto it = classes_.find(key);
  if (it == classes_.end()) {
    if (classes_.size() >= options_.max_classes) ForgetLeastRecent(forgotten);
    it = classes_.emplace(std::move(key), Class{}).first;
    classes_count_.store(classes_.size(), std::memory_order_relaxed);
  }
  Class& c = it->second;
  ++c.requests;
  c.last_use = MonotonicNow();
  const bool hit = !c.stock.empty();
  UniqueFd fd;
  if (hit) {
    fd = std::move(c.stock.front());
    c.stock.pop_front();
    stocked_bytes_ -= request.size;
    --stocked_buffers_;
    ++hits_;
  } else {
    ++misses_;
  }
  // Refills come in batches: the refill thread is woken when a class is
  // down to half its stock (or empty), not after every hit, so that it
  // competes with request threads for the CPU rarely, not once per call.
  if (c.requests >= options_.min_requests && options_.max_bytes > 0 &&
      c.stock.size() <= Target(request.size) / 2) {
    wake_[static_cast<int>(OnDuty())].Signal();
  }
  return fd;
}

const PooledBackend::ClassKey* PooledBackend::Deficit() const {
  const ClassKey* best = nullptr;
  absl::Time best_use = absl::InfinitePast();
  const absl::Time now = MonotonicNow();
  if (now < room_pause_until_) return nullptr;  // the room was just given up
  for (const auto& [key, c] : classes_) {
    const uint64_t size = std::get<0>(key);
    if (c.requests < options_.min_requests || c.stock.size() >= Target(size) ||
        stocked_bytes_ + size > options_.max_bytes || now < c.refill_after) {
      continue;
    }
    if (c.last_use > best_use) {
      best = &key;
      best_use = c.last_use;
    }
  }
  return best;
}

bool PooledBackend::RefillOnce(bool yield) {
  BackendRequest request;
  {
    absl::MutexLock lock(&mu_);
    const ClassKey* key = Deficit();
    if (key == nullptr) return false;
    request.size = std::get<0>(*key);
    request.name = std::get<1>(*key);
    request.usage = std::get<2>(*key);
    request.attach_drivers = DriversFromKey(std::get<3>(*key));
  }
  absl::StatusOr<UniqueFd> fd = Make(request, yield);
  UniqueFd surplus;  // closed after the lock is dropped
  absl::MutexLock lock(&mu_);
  auto it = classes_.find(
      ClassKey{request.size, request.name, request.usage, DriversKey(request.attach_drivers)});
  if (!fd.ok()) {
    ++refill_failures_;
    // This class again only after a while (a memory cgroup short of room
    // for its size, say): the others are refilled meanwhile, not held up
    // behind it, nor the cgroup pushed into reclaim ten times a second.
    if (it != classes_.end()) {
      Class& c = it->second;
      c.refill_backoff = std::min(std::max(2 * c.refill_backoff, kClassFailureBackoff),
                                  kClassFailureBackoffAtMost);
      c.refill_after = MonotonicNow() + c.refill_backoff;
    }
    // Out of memory or fds: stop pre-creating for a while.
    if (!stop_) stopping_.WaitWithTimeout(&mu_, kFailureBackoff);
    return true;
  }
  if (it != classes_.end()) it->second.refill_backoff = absl::ZeroDuration();
  if (it == classes_.end() || it->second.stock.size() >= Target(request.size) ||
      stocked_bytes_ + request.size > options_.max_bytes) {
    surplus = *std::move(fd);  // forgotten or filled meanwhile
    return true;
  }
  it->second.stock.push_back(*std::move(fd));
  stocked_bytes_ += request.size;
  ++stocked_buffers_;
  return true;
}

void PooledBackend::Forget(Classes::iterator it, std::deque<UniqueFd>& out) {
  stocked_bytes_ -= std::get<0>(it->first) * it->second.stock.size();
  stocked_buffers_ -= it->second.stock.size();
  for (UniqueFd& fd : it->second.stock) out.push_back(std::move(fd));
  classes_.erase(it);
  classes_count_.store(classes_.size(), std::memory_order_relaxed);
}

void PooledBackend::ForgetLeastRecent(std::deque<UniqueFd>& out) {
  auto oldest = classes_.end();
  for (auto it = classes_.begin(); it != classes_.end(); ++it) {
    if (oldest == classes_.end() || it->second.last_use < oldest->second.last_use) {
      oldest = it;
    }
  }
  if (oldest != classes_.end()) Forget(oldest, out);
}

void PooledBackend::TrimIdle(absl::Time now, std::deque<UniqueFd>& out) {
  for (auto it = classes_.begin(); it != classes_.end();) {
    auto cur = it++;
    if (now - cur->second.last_use >= options_.idle_timeout) Forget(cur, out);
  }
}

void PooledBackend::Trim() {
  std::deque<UniqueFd> freed;
  absl::MutexLock lock(&mu_);
  while (!classes_.empty()) Forget(classes_.begin(), freed);
  // `freed` is destroyed after `lock`: fds close outside the lock.
}

uint64_t PooledBackend::FreeStock(uint64_t room) {
  std::deque<UniqueFd> freed;
  {
    absl::MutexLock lock(&mu_);
    // The least recently used classes' stock first: the classes in use
    // keep theirs where that makes the room.
    std::vector<Classes::iterator> by_use;
    for (auto it = classes_.begin(); it != classes_.end(); ++it) by_use.push_back(it);
    std::sort(by_use.begin(), by_use.end(), [](Classes::iterator a, Classes::iterator b) {
      return a->second.last_use < b->second.last_use;
    });
    uint64_t bytes = 0;
    for (Classes::iterator it : by_use) {
      const uint64_t size = std::get<0>(it->first);
      std::deque<UniqueFd>& stock = it->second.stock;
      while (!stock.empty() && (bytes < room || freed.empty())) {
        freed.push_back(std::move(stock.back()));
        stock.pop_back();
        bytes += size;
        stocked_bytes_ -= size;
        --stocked_buffers_;
      }
    }
    // The refills leave that room alone a while (Allocate's retry first).
    if (!freed.empty()) room_pause_until_ = MonotonicNow() + kRoomPause;
  }
  return freed.size();  // closed here, outside the lock
}

uint64_t PooledBackend::max_stocked_buffers() const {
  // Every class at its most, or every stocked byte in one-page buffers.
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return std::min<uint64_t>(uint64_t{options_.max_per_class} * options_.max_classes,
                            options_.max_bytes / page);
}

PoolStats PooledBackend::stats() const {
  // Without mu_ (pool.h): counts a moment apart may be a step apart.
  constexpr auto kRelaxed = std::memory_order_relaxed;
  PoolStats s;
  s.hits = hits_.load(kRelaxed);
  s.contended = contended_.load(kRelaxed);
  s.misses = misses_.load(kRelaxed) + s.contended;
  s.stocked_buffers = stocked_buffers_.load(kRelaxed);
  s.stocked_bytes = stocked_bytes_.load(kRelaxed);
  s.classes = classes_count_.load(kRelaxed);
  s.refill_failures = refill_failures_.load(kRelaxed);
  s.trims_for_room = trims_for_room_.load(kRelaxed);
  return s;
}

PooledBackend::Refiller PooledBackend::OnDuty() const {
  const bool lone_client = options_.serving_cpu != nullptr &&
                           options_.serving_cpu->load(std::memory_order_relaxed) >= 0;
  return lone_client ? Refiller::kBesideClient : Refiller::kIdle;
}

void PooledBackend::Run(Refiller who) {
  // For the calling thread only (Linux: pid 0 is this thread; the nice
  // value is per thread too). Any thread may lower its priority; should it
  // be refused, refills simply run at normal priority.
  if (who == Refiller::kBesideClient) {
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kBesideClientNice);
  } else if (options_.idle_priority) {
    sched_param param{};
    (void)::sched_setscheduler(0, SCHED_IDLE, &param);
  }
  std::optional<CpuFollower> follower;
  if (who == Refiller::kBesideClient) follower.emplace(CpuFollower::ForThisThread());
  // Only the idle thread wakes by itself (to trim idle classes, and to hand
  // on a deficit nobody signalled); the other waits to be signalled.
  auto sleep = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::CondVar& cv = wake_[static_cast<int>(who)];
    if (who == Refiller::kIdle) {
      cv.WaitWithTimeout(&mu_, kTrimPeriod);
    } else {
      cv.Wait(&mu_);
    }
  };
  for (;;) {
    {
      std::deque<UniqueFd> freed;
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      if (who == Refiller::kIdle) TrimIdle(MonotonicNow(), freed);
      if (Deficit() == nullptr) {
        sleep();
        continue;
      }
      if (const Refiller duty = OnDuty(); duty != who) {
        // Woken just as the duty changed hands: pass the work on.
        wake_[static_cast<int>(duty)].Signal();
        sleep();
        continue;
      }
    }
    if (follower) {
      follower->Avoid(CpuHint(options_.serving_cpu->load(std::memory_order_relaxed)));
    }
    // Unlike SCHED_IDLE, a nice-19 thread is not preempted at once by a
    // request thread waking on its CPU (the scheduler may let it finish its
    // time slice first): it gives the CPU up between buffers, and within a
    // large one between pieces of its commit.
    const bool beside_client = who == Refiller::kBesideClient;
    RefillOnce(/*yield=*/beside_client);
    if (beside_client) ::sched_yield();
  }
}

}  // namespace halloc
