// PooledBackend: a bounded, shrinkable stock of fresh, committed buffers in
// front of another backend, refilled by background threads, so that a
// recurring allocation does not pay for creating memory and reserving its
// pages on the request path.
//
// What "warm" means here. A buffer handed to a client is never given to
// anyone else again: the client may keep its fd (and mappings) forever, so
// recycling it would leak one client's data to the next. Nothing is recycled
// at the buffer level. "Warm" means the memory was *created ahead of demand*:
// memfd_create + size + seal + fallocate (which allocates every page) already
// ran on a refill thread. The pages are zero either way: shmem leaves
// fallocated pages not up to date and clears each at its first touch, so
// the clearing itself lands on the first toucher (the client). Clearing them
// here instead (writing zeros, or a populating mapping) would cost the refill
// thread a copy per page and spare the client only the clear inside a fault
// it takes anyway: measured on this project's VMs, 4 MiB first touched cost
// ~13 ms of faults either way, the clearing ~0.6 ms of it. What is recycled
// is only what the kernel recycles anyway: pages freed by released buffers
// go back to the page allocator and are cleared again before they can reach
// a new buffer. A client allocating faster than the refill threads can
// commit sees misses, i.e. cold allocations.
//
// Which sizes are stocked. Buffers are pooled per *class*: the exact request
// (size, name, usage, attach drivers), because a memfd's name is fixed at creation and inner
// backends may choose memory by usage. A class is stocked only once it has
// been requested `min_requests` times (a recurring size: a camera or
// compositor queue), so one-off sizes cost nothing. A miss allocates
// synchronously through the same code (inner backend + commit) and so
// returns exactly what a hit would.
//
// Bounds. At most `max_bytes` are stocked in all, at most `class_bytes` (a
// buffer larger than that is not stocked at all) and at most
// `max_per_class` buffers per class, and at
// most `max_classes` classes are remembered (least recently used forgotten).
// A class unused for `idle_timeout` loses its stock; Trim() drops it all;
// a request that cannot be made for lack of memory or fds frees stock, as
// much as it asks for (FreeStock), and is tried again: the stock is
// charged to no client, and never keeps one from its buffer.
// Each stocked buffer costs one fd in the daemon.
//
// Thread-safety: all methods are thread-safe. The inner backend must be
// thread-safe too (refill threads and request threads call it at once),
// which every Backend already is: the allocator calls it without a lock.
#ifndef HALLOC_SERVICE_BACKEND_POOL_H_
#define HALLOC_SERVICE_BACKEND_POOL_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/backend/backend.h"

namespace halloc {

struct PoolOptions {
  // Total bytes held in stock, over all classes. 0 disables stocking (every
  // allocation is a miss, still committed when `commit`).
  uint64_t max_bytes = uint64_t{256} << 20;
  // Stock of one class: floor(class_bytes / size) buffers, at most
  // max_per_class (none for buffers larger than class_bytes).
  uint64_t class_bytes = uint64_t{64} << 20;
  uint32_t max_per_class = 32;
  // Requests of a class (since it was last forgotten) before it is stocked.
  uint32_t min_requests = 2;
  size_t max_classes = 64;
  // A class not requested for this long is forgotten and its stock freed.
  absl::Duration idle_timeout = absl::Seconds(10);
  // fallocate() every buffer before handing it out (memfd: allocates the
  // pages now, so a short-of-memory system answers RESOURCE_EXHAUSTED at
  // Allocate rather than SIGBUS/OOM at first touch; each is cleared at its
  // first touch, as the class comment says).
  // Off for backends whose memory is committed at allocation (dma-bufs).
  bool commit = true;
  // Run the refill threads. Tests turn them off and call RefillOnce().
  bool background = true;
  // Run the (first) refill thread as SCHED_IDLE: refills use only CPU time
  // no request wants (a request thread waking on its CPU preempts it at
  // once), so they never delay a request; a class drained faster than idle
  // time refills it sees misses, which do the same work on the request path.
  bool idle_priority = true;
  // When set: the CPU a lone client is served on while it is >= 0 (-1: none,
  // or several clients). hallocd passes ServingCpu() (util/cpu_follower.h).
  // While a lone client is served, a second refill thread takes over, at
  // nice 19 on the CPUs other than the served one, and gives up its CPU
  // after each buffer. On the served CPU the client and the broker thread
  // take turns and leave no idle time: SCHED_IDLE refills starved there
  // (measured: 3.5% of a co-located stream's calls came from stock). On
  // another CPU a SCHED_IDLE thread makes that CPU count as idle to wake-up
  // placement, which then sends the client there, away from the broker
  // thread; a nice-19 thread leaves it looking busy, and gets about 1.5% of
  // a CPU against a request thread.
  const std::atomic<int>* serving_cpu = nullptr;
};

class PooledBackend : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<PooledBackend>> Create(
      std::unique_ptr<Backend> inner, PoolOptions options);
  ~PooledBackend() override;  // stops the refill thread, frees the stock

  // The inner backend's name: the buffers are its buffers.
  absl::string_view name() const override { return inner_->name(); }
  bool MakesDmaBufs() const override { return inner_->MakesDmaBufs(); }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& request) override;
  bool CanEnforce(CpuAccess access) const override {
    return inner_->CanEnforce(access);
  }
  bool CanEnforceFor(CpuAccess access, const Holder& holder) const override {
    return inner_->CanEnforceFor(access, holder);
  }
  bool CanProtect() const override { return inner_->CanProtect(); }
  bool CanLimitAttach() const override { return inner_->CanLimitAttach(); }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& buffer,
                                    const ViewRights& rights) override {
    return inner_->OpenView(buffer, rights);
  }
  bool NeedsView(const ViewRights& rights) const override {
    return inner_->NeedsView(rights);
  }
  bool SharesReadViews() const override { return inner_->SharesReadViews(); }
  absl::Status CheckView(const ViewRights& rights) const override {
    return inner_->CheckView(rights);
  }
  bool CanRevokeLive() const override { return inner_->CanRevokeLive(); }
  LastReference last_reference() const override { return inner_->last_reference(); }
  int IsLastReference(int fd) const override { return inner_->IsLastReference(fd); }
  absl::StatusOr<RevocableView> OpenRevocableView(
      const UniqueFd& buffer, const ViewRights& rights) override {
    return inner_->OpenRevocableView(buffer, rights);
  }
  absl::Status RevokeView(const UniqueFd& buffer, uint64_t id) override {
    return inner_->RevokeView(buffer, id);
  }

  PoolStats stats() const;
  PoolStats pool_stats() const override { return stats(); }
  uint64_t max_stocked_buffers() const override;
  // Frees the whole stock and forgets every class.
  void Trim();
  // Frees stocked buffers, the least recently used classes' first, until
  // they hold `room` bytes (one buffer at least; fewer where the stock has
  // less), keeping the classes, and pauses the refills a while so that
  // none takes that room back: how many buffers it freed. Done by Allocate
  // when making a buffer fails for lack of memory or fds and the stock
  // holds at least its size (then tried once more; where that failed all
  // the same, refills go on at once).
  uint64_t FreeStock(uint64_t room);
  // One refill step on the caller's thread: creates one buffer for the most
  // recently used class short of stock. false when no class needs one.
  // `yield`: commit in pieces and give the CPU up between them (the
  // beside-client refill thread, which is not preempted at once).
  bool RefillOnce(bool yield = false);

 private:
  friend class PooledBackendPeer;  // tests: hold mu_ as a stalled refill would
  // (size, name, usage, attach drivers): everything a backend may choose
  // memory by. The drivers are encoded by DriversKey().
  using ClassKey = std::tuple<uint64_t, std::string, uint64_t, std::string>;
  struct Class {
    std::deque<UniqueFd> stock;
    uint64_t requests = 0;
    absl::Time last_use;
    // A refill of it failed: not tried again before then (others are), the
    // wait doubling with each failure in a row (pool.cc).
    absl::Time refill_after = absl::InfinitePast();
    absl::Duration refill_backoff = absl::ZeroDuration();
  };

  PooledBackend(std::unique_ptr<Backend> inner, PoolOptions options);
  // Inner allocation + commit: the one way memory is made, hit or miss.
  // `yield`: as for RefillOnce.
  absl::StatusOr<UniqueFd> Make(const BackendRequest& request, bool yield = false) const;
  // A stocked buffer of `request`'s class, or none (a miss); notes the
  // request and wakes a refill where the class runs low. Classes forgotten
  // to make room go to `forgotten` (closed outside the lock).
  UniqueFd TakeLocked(const BackendRequest& request, std::deque<UniqueFd>& forgotten)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // mu_, if it comes within kLockTries tries, a yield of the CPU and as many
  // again (Allocate never waits for it).
  bool TryLockBriefly() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true, mu_) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  static constexpr int kLockTries = 64;
  uint64_t Target(uint64_t size) const;
  // The class to refill next, or nullptr.
  const ClassKey* Deficit() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  using Classes = absl::flat_hash_map<ClassKey, Class>;
  // Erases a class: its stock moves to `out` (closed by the caller after it
  // drops the lock), its bytes leave the totals.
  void Forget(Classes::iterator it, std::deque<UniqueFd>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetLeastRecent(std::deque<UniqueFd>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the stock of idle classes into `out` (closed outside the lock).
  void TrimIdle(absl::Time now, std::deque<UniqueFd>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The refill threads: kIdle refills unless a lone client is served,
  // kBesideClient (only with PoolOptions::serving_cpu) while one is.
  enum class Refiller { kIdle, kBesideClient };
  void Run(Refiller who);
  // The refill thread on duty now.
  Refiller OnDuty() const;

  const std::unique_ptr<Backend> inner_;
  const PoolOptions options_;

  mutable absl::Mutex mu_;
  // Wakes a refill thread (indexed by Refiller): only the one on duty is
  // signalled, so that the other never wakes just to sleep again.
  absl::CondVar wake_[2];
  absl::CondVar stopping_;  // stop_ was set
  Classes classes_ ABSL_GUARDED_BY(mu_);
  // The counts stats() reports: changed only under mu_, read by stats()
  // without it (a refill thread preempted holding mu_ would otherwise hold
  // up every Stats call and metrics scrape, as it would allocations).
  std::atomic<uint64_t> classes_count_{0};
  std::atomic<uint64_t> stocked_bytes_{0};
  std::atomic<uint64_t> stocked_buffers_{0};
  // PoolStats::contended: misses because mu_ stayed held (see Allocate).
  std::atomic<uint64_t> contended_{0};
  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> refill_failures_{0};
  std::atomic<uint64_t> trims_for_room_{0};
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // FreeStock freed it for a request: no refill before then.
  absl::Time room_pause_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::vector<std::thread> threads_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_BACKEND_POOL_H_
