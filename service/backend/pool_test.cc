#include "service/backend/pool.h"

#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"

namespace halloc {
namespace {

constexpr uint64_t kPage = 4096;
// The memfd backends look only at a udmabuf node that is not there (the
// default reads this kernel's module lists: on a kernel that builds
// udmabuf, read-only views would be refused here).
constexpr char kNoUdmabuf[] = "/nonexistent/udmabuf";

// Counts the inner allocations, to tell hits (no inner call) from misses.
class CountingBackend : public MemfdBackend {
 public:
  explicit CountingBackend(std::atomic<int>* calls) : calls_(calls) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    ++*calls_;
    return MemfdBackend::Allocate(r);
  }

 private:
  std::atomic<int>* calls_;
};

PoolOptions Manual() {
  PoolOptions o;
  o.background = false;
  return o;
}

void ExpectZeroedAndCommitted(const UniqueFd& fd, uint64_t size) {
  struct stat st;
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
  // fallocate reserved every page: the file has all its blocks.
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, size);
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto* bytes = static_cast<const unsigned char*>(p);
  for (uint64_t i = 0; i < size; i += 509) ASSERT_EQ(bytes[i], 0) << i;
  munmap(p, size);
}

// The beside-client refill thread commits large buffers in pieces (and
// yields between them): every page, the last partial piece included.
TEST(PooledBackendTest, AYieldingRefillCommitsEveryPiece) {
  for (uint64_t size : {kPage, (uint64_t{3} << 20) + kPage}) {
    SCOPED_TRACE(size);
    std::atomic<int> calls{0};
    auto pool = PooledBackend::Create(std::make_unique<CountingBackend>(&calls), Manual());
    ASSERT_TRUE(pool.ok()) << pool.status();
    const BackendRequest req{size, "y", 0};
    ASSERT_TRUE((*pool)->Allocate(req).ok());
    ASSERT_TRUE((*pool)->Allocate(req).ok());  // now a recurring class
    ASSERT_TRUE((*pool)->RefillOnce(/*yield=*/true));
    const int before = calls.load();
    absl::StatusOr<UniqueFd> hit = (*pool)->Allocate(req);
    ASSERT_TRUE(hit.ok()) << hit.status();
    EXPECT_EQ(calls.load(), before);  // from stock
    ExpectZeroedAndCommitted(*hit, size);
  }
}

TEST(PooledBackendTest, MissesAndHitsReturnTheSameKindOfMemory) {
  for (uint64_t size : {kPage, 16 * kPage, uint64_t{1} << 20}) {
    SCOPED_TRACE(size);
    std::atomic<int> calls{0};
    auto pool = PooledBackend::Create(
        std::make_unique<CountingBackend>(&calls), Manual());
    ASSERT_TRUE(pool.ok()) << pool.status();
    const BackendRequest req{size, "t", 0};
    absl::StatusOr<UniqueFd> miss = (*pool)->Allocate(req);
    ASSERT_TRUE(miss.ok()) << miss.status();
    ExpectZeroedAndCommitted(*miss, size);
    // One request is not a recurring size yet: nothing to stock.
    EXPECT_FALSE((*pool)->RefillOnce());
    ASSERT_TRUE((*pool)->Allocate(req).ok());
    ASSERT_TRUE((*pool)->RefillOnce());
    const int before = calls.load();
    absl::StatusOr<UniqueFd> hit = (*pool)->Allocate(req);
    ASSERT_TRUE(hit.ok()) << hit.status();
    EXPECT_EQ(calls.load(), before);  // from stock
    ExpectZeroedAndCommitted(*hit, size);
    // (And F_SEAL_EXEC, 0x20, where the kernel has it: memfd_backend_test.)
    EXPECT_EQ(fcntl(hit->get(), F_GET_SEALS) & ~0x20, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    // Writes through one buffer never show in the next one.
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   hit->get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    memset(p, 0xab, size);
    munmap(p, size);
    while ((*pool)->RefillOnce()) {
    }
    absl::StatusOr<UniqueFd> next = (*pool)->Allocate(req);
    ASSERT_TRUE(next.ok());
    ExpectZeroedAndCommitted(*next, size);
    EXPECT_EQ((*pool)->stats().hits, 2u);
  }
}

// Records the attach drivers of every inner allocation.
class RecordingBackend : public MemfdBackend {
 public:
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    absl::MutexLock lock(&mu_);
    seen_.push_back(r.attach_drivers);
    return MemfdBackend::Allocate(r);
  }
  std::vector<std::optional<std::vector<std::string>>> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::optional<std::vector<std::string>>> seen_;
};

TEST(PooledBackendTest, AttachDriversAreOneMoreDimensionOfAClass) {
  auto recording = std::make_unique<RecordingBackend>();
  RecordingBackend* inner = recording.get();
  PoolOptions o = Manual();
  o.min_requests = 1;
  auto pool = PooledBackend::Create(std::move(recording), o);
  ASSERT_TRUE(pool.ok());
  using Drivers = std::optional<std::vector<std::string>>;
  const BackendRequest vivid{kPage, "c", 0, Drivers(std::vector<std::string>{"vivid"})};
  const BackendRequest none{kPage, "c", 0, Drivers(std::vector<std::string>{})};
  const BackendRequest any{kPage, "c", 0, std::nullopt};
  ASSERT_TRUE((*pool)->Allocate(vivid).ok());  // miss
  ASSERT_TRUE((*pool)->RefillOnce());           // stocks the vivid class
  EXPECT_EQ(inner->seen().back(), vivid.attach_drivers) << "refill kept the drivers";
  while ((*pool)->RefillOnce()) {
  }
  const uint64_t hits = (*pool)->stats().hits;
  ASSERT_TRUE((*pool)->Allocate(vivid).ok());
  EXPECT_EQ((*pool)->stats().hits, hits + 1);
  // Same size, name and usage, other drivers: other classes, so misses.
  ASSERT_TRUE((*pool)->Allocate(none).ok());
  ASSERT_TRUE((*pool)->Allocate(any).ok());
  EXPECT_EQ((*pool)->stats().hits, hits + 1);
  EXPECT_EQ(inner->seen().back(), any.attach_drivers);
  // Whatever the names, a class's drivers come back as they were: an empty
  // one too (dropped, the class was never found, its refills made and
  // threw away buffers for good).
  const BackendRequest odd{kPage, "c", 0, Drivers(std::vector<std::string>{"a", ""})};
  ASSERT_TRUE((*pool)->Allocate(odd).ok());
  const uint64_t stocked = (*pool)->stats().stocked_buffers;
  ASSERT_TRUE((*pool)->RefillOnce());
  EXPECT_EQ(inner->seen().back(), odd.attach_drivers);
  EXPECT_EQ((*pool)->stats().stocked_buffers, stocked + 1) << "the class stocked";
}

TEST(PooledBackendTest, StockIsBoundedPerClassAndInTotal) {
  PoolOptions o = Manual();
  o.min_requests = 1;
  o.class_bytes = 4 * kPage;
  o.max_bytes = 6 * kPage;
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  ASSERT_TRUE((*pool)->Allocate({kPage, "a", 0}).ok());
  while ((*pool)->RefillOnce()) {
  }
  EXPECT_EQ((*pool)->stats().stocked_buffers, 4u);  // class_bytes / size
  ASSERT_TRUE((*pool)->Allocate({2 * kPage, "b", 0}).ok());
  while ((*pool)->RefillOnce()) {
  }
  const PoolStats s = (*pool)->stats();
  EXPECT_EQ(s.stocked_bytes, 6 * kPage);  // max_bytes
  EXPECT_EQ(s.stocked_buffers, 5u);
  // A buffer larger than a class may hold is not stocked at all: one of
  // them would take (nearly) the whole pool from every other class.
  ASSERT_TRUE((*pool)->Allocate({5 * kPage, "big", 0}).ok());
  ASSERT_TRUE((*pool)->Allocate({5 * kPage, "big", 0}).ok());
  (*pool)->Trim();
  ASSERT_TRUE((*pool)->Allocate({5 * kPage, "big", 0}).ok());
  ASSERT_TRUE((*pool)->Allocate({5 * kPage, "big", 0}).ok());
  EXPECT_FALSE((*pool)->RefillOnce());
  EXPECT_EQ((*pool)->stats().stocked_buffers, 0u);
  // What hallocd keeps fds for: six one-page buffers at most (max_bytes),
  // whatever the classes.
  EXPECT_EQ((*pool)->max_stocked_buffers(), 6u);
  EXPECT_LE(s.stocked_buffers, (*pool)->max_stocked_buffers());
  o.max_bytes = uint64_t{1} << 30;
  o.max_per_class = 3;
  o.max_classes = 5;
  auto by_classes = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(by_classes.ok());
  EXPECT_EQ((*by_classes)->max_stocked_buffers(), 15u);
}

TEST(PooledBackendTest, TrimFreesEverythingAndZeroBytesNeverStocks) {
  PoolOptions o = Manual();
  o.min_requests = 1;
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  ASSERT_TRUE((*pool)->Allocate({kPage, "a", 0}).ok());
  ASSERT_TRUE((*pool)->RefillOnce());
  (*pool)->Trim();
  EXPECT_EQ((*pool)->stats().stocked_buffers, 0u);
  EXPECT_EQ((*pool)->stats().classes, 0u);

  o.max_bytes = 0;
  auto off = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(off.ok());
  absl::StatusOr<UniqueFd> fd = (*off)->Allocate({kPage, "a", 0});
  ASSERT_TRUE(fd.ok());
  ExpectZeroedAndCommitted(*fd, kPage);
  EXPECT_FALSE((*off)->RefillOnce());
}

TEST(PooledBackendTest, ForgetsTheLeastRecentClassBeyondTheLimit) {
  PoolOptions o = Manual();
  o.min_requests = 1;
  o.max_classes = 2;
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  for (const char* name : {"a", "b", "c"}) {
    ASSERT_TRUE((*pool)->Allocate({kPage, name, 0}).ok());
  }
  EXPECT_EQ((*pool)->stats().classes, 2u);
}

// A memfd backend that cannot make buffers named "short" (a memory cgroup
// short of room for their size, say).
class ShortOfRoomFor : public MemfdBackend {
 public:
  ShortOfRoomFor() : MemfdBackend(kNoUdmabuf) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (r.name == "short") return absl::ResourceExhaustedError("out of memory (test)");
    return MemfdBackend::Allocate(r);
  }
};

// A class whose refill fails waits its turn again: the refill went back to
// it, the most recently used, every time, and no other class was refilled.
TEST(PooledBackendTest, AClassWhoseRefillFailsDoesNotHoldUpTheOthers) {
  auto pool = PooledBackend::Create(std::make_unique<ShortOfRoomFor>(), Manual());
  ASSERT_TRUE(pool.ok());
  const BackendRequest ok{kPage, "ok", 0}, short_of_room{kPage, "short", 0};
  for (int i = 0; i < 2; ++i) ASSERT_TRUE((*pool)->Allocate(ok).ok());
  for (int i = 0; i < 2; ++i) EXPECT_FALSE((*pool)->Allocate(short_of_room).ok());
  ASSERT_TRUE((*pool)->RefillOnce());  // "short", the most recent: fails
  EXPECT_EQ((*pool)->stats().refill_failures, 1u);
  ASSERT_TRUE((*pool)->RefillOnce());  // "ok" meanwhile
  EXPECT_EQ((*pool)->stats().refill_failures, 1u) << "the failing class was tried again at once";
  EXPECT_EQ((*pool)->stats().stocked_buffers, 1u);
}

// A memfd backend whose next `fail` allocations find no room; `then`, if
// set, runs once before the first allocation after those.
class FailsNext : public MemfdBackend {
 public:
  FailsNext() : MemfdBackend(kNoUdmabuf) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (fail > 0) {
      --fail;
      return absl::ResourceExhaustedError("out of memory (test)");
    }
    if (then) std::exchange(then, nullptr)();
    return MemfdBackend::Allocate(r);
  }
  std::atomic<int> fail{0};
  std::function<void()> then;
};

// A manual pool (classes stocked after one request) over a FailsNext.
class ShortOfRoomTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto inner = std::make_unique<FailsNext>();
    backend = inner.get();
    PoolOptions o = Manual();
    o.min_requests = 1;
    absl::StatusOr<std::unique_ptr<PooledBackend>> made =
        PooledBackend::Create(std::move(inner), o);
    ASSERT_TRUE(made.ok()) << made.status();
    pool = *std::move(made);
  }
  FailsNext* backend = nullptr;  // pool's
  std::unique_ptr<PooledBackend> pool;
};

// The stock is charged to no client: a request that cannot be made for
// lack of room frees it and is tried once more, rather than fail while
// hallocd holds memory (and fds) for requests that may never come.
TEST_F(ShortOfRoomTest, ARequestShortOfRoomGoesBeforeTheStock) {
  const BackendRequest stocked{kPage, "stocked", 0}, other{kPage, "other", 0};
  ASSERT_TRUE(pool->Allocate(stocked).ok());
  ASSERT_TRUE(pool->RefillOnce());
  ASSERT_EQ(pool->stats().stocked_buffers, 1u);
  backend->fail = 1;
  absl::StatusOr<UniqueFd> fd = pool->Allocate(other);  // a miss, short of room
  ASSERT_TRUE(fd.ok()) << fd.status();
  PoolStats s = pool->stats();
  EXPECT_EQ(s.stocked_buffers, 0u);
  EXPECT_EQ(s.trims_for_room, 1u);
  // Not refilled at once: that would take the room back for the next.
  EXPECT_FALSE(pool->RefillOnce());
  // With nothing in stock, the failure is the answer (tried once).
  backend->fail = 2;
  EXPECT_EQ(pool->Allocate(other).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(backend->fail, 1) << "tried again with nothing freed";
  EXPECT_EQ(pool->stats().trims_for_room, 1u);
}

// Only as much stock goes as the request asks for, the least recently used
// class's first: the classes in use keep theirs.
TEST_F(ShortOfRoomTest, ARequestShortOfRoomFreesOnlyTheRoomItAsksFor) {
  const BackendRequest old_class{2 * kPage, "old", 0}, recent{kPage, "recent", 0};
  ASSERT_TRUE(pool->Allocate(old_class).ok());
  ASSERT_TRUE(pool->RefillOnce());
  ASSERT_TRUE(pool->Allocate(recent).ok());
  while (pool->stats().stocked_buffers < 3 && pool->RefillOnce()) {
  }
  ASSERT_GE(pool->stats().stocked_buffers, 3u) << "no stock to free from";
  const PoolStats before = pool->stats();
  backend->fail = 1;
  ASSERT_TRUE(pool->Allocate({kPage, "other", 0}).ok());
  PoolStats s = pool->stats();
  EXPECT_EQ(s.trims_for_room, 1u);
  EXPECT_EQ(s.stocked_buffers, before.stocked_buffers - 1) << "freed more than one buffer";
  EXPECT_EQ(s.stocked_bytes, before.stocked_bytes - 2 * kPage) << "not the old class's";
  // The recent class kept its stock: a hit.
  ASSERT_TRUE(pool->Allocate(recent).ok());
  EXPECT_EQ(pool->stats().hits, s.hits + 1);
}

// The room freed for a request is its own: no refill takes it back before
// the request is tried again (a refill thread its miss woke could have).
TEST_F(ShortOfRoomTest, NoRefillTakesTheRoomFreedForARequestBeforeItsRetry) {
  ASSERT_TRUE(pool->Allocate({kPage, "stocked", 0}).ok());
  ASSERT_TRUE(pool->RefillOnce());
  backend->fail = 1;
  std::optional<bool> refilled;
  backend->then = [&] { refilled = pool->RefillOnce(); };  // as the retry begins
  ASSERT_TRUE(pool->Allocate({kPage, "other", 0}).ok());
  ASSERT_TRUE(refilled.has_value()) << "the request was not tried again";
  EXPECT_FALSE(*refilled) << "a refill ran between freeing the room and the retry";
  EXPECT_EQ(pool->stats().stocked_buffers, 0u);
}

// A request larger than the whole stock cannot be helped by freeing it:
// the stock stays (a request that can never fit emptied it every time).
TEST_F(ShortOfRoomTest, ARequestTheStockCouldNotMakeRoomForLeavesIt) {
  const BackendRequest stocked{kPage, "stocked", 0}, larger{64 * kPage, "larger", 0};
  ASSERT_TRUE(pool->Allocate(stocked).ok());
  ASSERT_TRUE(pool->RefillOnce());
  backend->fail = 1;
  EXPECT_EQ(pool->Allocate(larger).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->stats().stocked_buffers, 1u);
  EXPECT_EQ(pool->stats().trims_for_room, 0u);
  // One it could have made room for, that failed all the same: the stock
  // was no help, and refills go on (no class kept empty by it).
  backend->fail = 2;
  EXPECT_EQ(pool->Allocate({kPage, "other", 0}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->stats().trims_for_room, 1u);
  EXPECT_TRUE(pool->RefillOnce()) << "refills paused by a request the stock did not help";
}

// Waits (up to 10 s) for the background thread to stock `want` buffers.
bool WaitForStock(PooledBackend& pool, uint64_t want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (pool.stats().stocked_buffers != want) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// Four threads taking from a stock the background thread refills: every
// buffer handed out is a different one (none given twice, by a hit and a
// miss, or two hits), zeroed, and some came from the stock. (It asserted
// only that hits and misses added up, which holds with no refill at all.)
TEST(PooledBackendTest, BackgroundThreadRefillsAndConcurrentUseIsSafe) {
  PoolOptions o;
  o.min_requests = 1;
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  ASSERT_TRUE((*pool)->Allocate({kPage, "x", 0}).ok());  // the class is asked for
  ASSERT_TRUE(WaitForStock(**pool, o.max_per_class))     // (a page: max_per_class)
      << "the background thread never stocked the class";
  constexpr int kThreads = 4, kEach = 100;
  std::vector<std::vector<UniqueFd>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        absl::StatusOr<UniqueFd> fd = (*pool)->Allocate({kPage, "x", 0});
        ASSERT_TRUE(fd.ok()) << fd.status();
        got[t].push_back(*std::move(fd));
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<ino_t> inodes;
  for (const std::vector<UniqueFd>& fds : got) {
    for (const UniqueFd& fd : fds) {
      struct stat st;
      ASSERT_EQ(fstat(fd.get(), &st), 0);
      EXPECT_TRUE(inodes.insert(st.st_ino).second) << "inode " << st.st_ino << " handed out twice";
      char byte = 1;
      ASSERT_EQ(pread(fd.get(), &byte, 1, kPage - 1), 1);
      EXPECT_EQ(byte, 0);
    }
  }
  EXPECT_EQ(inodes.size(), static_cast<size_t>(kThreads * kEach));
  const PoolStats s = (*pool)->stats();
  EXPECT_EQ(s.hits + s.misses, static_cast<uint64_t>(kThreads * kEach) + 1);
  EXPECT_GT(s.hits, 0u) << "nothing came from the stock";
  EXPECT_EQ(s.refill_failures, 0u);
}

TEST(PooledBackendTest, BackgroundThreadRefillsAClassDrainedBelowHalf) {
  PoolOptions o;
  o.min_requests = 1;
  o.class_bytes = 8 * kPage;  // a stock of 8
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  ASSERT_TRUE((*pool)->Allocate({kPage, "q", 0}).ok());  // a miss; wakes it
  ASSERT_TRUE(WaitForStock(**pool, 8)) << (*pool)->stats().stocked_buffers;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<UniqueFd> fd = (*pool)->Allocate({kPage, "q", 0});
    ASSERT_TRUE(fd.ok());
    ExpectZeroedAndCommitted(*fd, kPage);
  }
  // Taken from the stock, unless the refill thread held the lock then.
  EXPECT_EQ((*pool)->stats().hits + (*pool)->stats().contended, 5u);
  EXPECT_TRUE(WaitForStock(**pool, 8)) << (*pool)->stats().stocked_buffers;
}

// Records where and how every inner allocation made by another thread than
// the one that created it (i.e. by a refill thread) ran.
class CpuRecordingBackend : public MemfdBackend {
 public:
  struct Call {
    int cpu;
    int nice;    // -100: unknown
    int policy;  // SCHED_OTHER, SCHED_IDLE, ...
  };
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (::gettid() != creator_) {
      errno = 0;
      const int nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
      const Call call{::sched_getcpu(), errno == 0 ? nice : -100, ::sched_getscheduler(0)};
      absl::MutexLock lock(&mu_);
      calls_.push_back(call);
    }
    return MemfdBackend::Allocate(r);
  }
  std::vector<Call> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(calls_, {});
  }

 private:
  const pid_t creator_ = ::gettid();
  absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
};

// While hallocd serves one client (util/cpu_follower.h), refills are made
// at nice 19 off that client's CPU, and move when it changes; otherwise by
// a SCHED_IDLE thread, anywhere.
TEST(PooledBackendTest, RefillsKeepOffTheServedCpuAndAreIdleOtherwise) {
  cpu_set_t ours;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(ours), &ours), 0);
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &ours)) allowed.push_back(c);
  }
  if (allowed.size() < 2) GTEST_SKIP() << "one CPU only: there is nothing to keep off";
  std::atomic<int> serving{-1};
  PoolOptions o;
  o.min_requests = 1;
  o.class_bytes = 4 * kPage;  // a stock of 4
  o.serving_cpu = &serving;
  auto owned = std::make_unique<CpuRecordingBackend>();
  CpuRecordingBackend* inner = owned.get();
  auto pool = PooledBackend::Create(std::move(owned), o);
  ASSERT_TRUE(pool.ok());
  // Takes the whole stock (or the first miss), so that all of it is made
  // again, and returns how it was made: the refills made while it drained
  // too (the thread is woken at half the stock, and a quick one restocks
  // during the drain), all after `serving` was set.
  auto drain_and_refill = [&]() -> std::vector<CpuRecordingBackend::Call> {
    inner->Take();
    for (int i = 0; i < 4; ++i) EXPECT_TRUE((*pool)->Allocate({kPage, "f", 0}).ok());
    EXPECT_TRUE(WaitForStock(**pool, 4)) << (*pool)->stats().stocked_buffers;
    return inner->Take();
  };
  for (int cpu : {allowed[0], allowed[1]}) {
    SCOPED_TRACE(cpu);
    serving = cpu;
    const std::vector<CpuRecordingBackend::Call> calls = drain_and_refill();
    EXPECT_FALSE(calls.empty());
    for (const CpuRecordingBackend::Call& c : calls) {
      EXPECT_NE(c.cpu, cpu);
      EXPECT_TRUE(CPU_ISSET(c.cpu, &ours)) << c.cpu;
      EXPECT_EQ(c.nice, 19);
      EXPECT_EQ(c.policy, SCHED_OTHER);
    }
  }
  serving = -1;  // no lone client: the idle thread, wherever
  const std::vector<CpuRecordingBackend::Call> calls = drain_and_refill();
  EXPECT_FALSE(calls.empty());
  for (const CpuRecordingBackend::Call& c : calls) EXPECT_EQ(c.policy, SCHED_IDLE);
}

}  // namespace

class PooledBackendPeer {
 public:
  static absl::Mutex& mu(PooledBackend& pool) { return pool.mu_; }
};

namespace {

// A refill thread preempted while it holds the pool's lock (idle priority:
// it may not run again while anyone keeps the CPUs busy) holds up no
// allocation: it is made as a miss, and counted as one. Nor the stats.
TEST(PooledBackendTest, AllocationsNeverWaitForAStalledRefill) {
  PoolOptions o = Manual();
  o.min_requests = 1;
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), o);
  ASSERT_TRUE(pool.ok());
  const BackendRequest req{kPage, "c", 0, std::nullopt};
  ASSERT_TRUE((*pool)->Allocate(req).ok());
  ASSERT_TRUE((*pool)->RefillOnce());
  absl::Mutex& mu = PooledBackendPeer::mu(**pool);
  absl::Notification done;
  absl::StatusOr<UniqueFd> got = absl::UnknownError("not yet");
  PoolStats during;
  mu.Lock();  // as the stalled refill thread
  std::thread request([&] {
    got = (*pool)->Allocate(req);
    during = (*pool)->stats();  // nor does a Stats call or a metrics scrape
    done.Notify();
  });
  const bool returned = done.WaitForNotificationWithTimeout(absl::Seconds(10));
  mu.Unlock();
  request.join();
  EXPECT_TRUE(returned) << "the allocation or stats() waited for the lock's holder";
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(during.stocked_buffers, 1u);
  EXPECT_EQ(during.contended, 1u);
  EXPECT_GE(::fcntl(got->get(), F_GETFD), 0);
  const PoolStats s = (*pool)->stats();
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.misses, 2u) << "made, not taken from the stock";
  EXPECT_EQ(s.contended, 1u);
  EXPECT_EQ(s.stocked_buffers, 1u);
}

TEST(PooledBackendTest, DelegatesNameAndRights) {
  auto pool = PooledBackend::Create(std::make_unique<MemfdBackend>(kNoUdmabuf), Manual());
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->name(), "memfd");
  EXPECT_FALSE((*pool)->MakesDmaBufs());
  EXPECT_FALSE((*pool)->CanEnforce(CpuAccess::kNone));
  EXPECT_EQ((*pool)->CanProtect(), MemfdBackend(kNoUdmabuf).CanProtect());
  EXPECT_EQ((*pool)->CanLimitAttach(), MemfdBackend(kNoUdmabuf).CanLimitAttach());
  EXPECT_EQ((*pool)->last_reference(), Backend::LastReference::kWatched)
      << "a memfd's last file is seen";
  absl::StatusOr<UniqueFd> fd = (*pool)->Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  absl::StatusOr<UniqueFd> ro = (*pool)->OpenView(*fd, ViewRights{CpuAccess::kRead});
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ(fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_EQ(PooledBackend::Create(nullptr, Manual()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Whom a read-only fd binds is the memfd's answer (not its daemon's uid).
  auto of_user = PooledBackend::Create(
      std::make_unique<MemfdBackend>(UdmabufSources{kNoUdmabuf, "", ""}, 1234), Manual());
  ASSERT_TRUE(of_user.ok());
  EXPECT_FALSE((*of_user)->CanEnforceFor(CpuAccess::kRead, {1234}));
  EXPECT_TRUE((*of_user)->CanEnforceFor(CpuAccess::kRead, {1235}));
}

// Exit code of a child that could not become uid 65534.
constexpr int kCannotSwitchUid = 255;

// In a forked child as uid 65534 (an unprivileged receiver of `fd`):
// 0 when reopening `fd` through /proc (O_RDWR, O_WRONLY) fails with EACCES
// and fchmod fails with EPERM, else which of them did not.
int StrangerReopenResult(int fd) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
      _exit(kCannotSwitchUid);
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    int escaped = 0;
    if (open(path.c_str(), O_RDWR) >= 0 || errno != EACCES) escaped |= 1;
    if (open(path.c_str(), O_WRONLY) >= 0 || errno != EACCES) escaped |= 2;
    if (fchmod(fd, 0777) == 0 || errno != EPERM) escaped |= 4;
    _exit(escaped);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Issue #10 on the memfd-pool path: stocked buffers are made (and
// fallocate'd) on the refill thread, long before a request, and must be as
// closed to reopening as a fresh one.
TEST(PooledBackendTest, ReadViewsOfHitsAndMissesCannotBeReopenedWritable) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child as uid 65534 (the daemon "
                    "normally runs as root)";
  }
  std::atomic<int> calls{0};
  PoolOptions o = Manual();
  o.min_requests = 1;
  auto pool = PooledBackend::Create(std::make_unique<CountingBackend>(&calls), o);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const BackendRequest req{kPage, "t", 0};
  absl::StatusOr<UniqueFd> miss = (*pool)->Allocate(req);
  ASSERT_TRUE(miss.ok()) << miss.status();
  ASSERT_TRUE((*pool)->RefillOnce());
  const int before = calls.load();
  absl::StatusOr<UniqueFd> hit = (*pool)->Allocate(req);
  ASSERT_TRUE(hit.ok()) << hit.status();
  ASSERT_EQ(calls.load(), before) << "not from stock";
  for (const UniqueFd* fd : {&*miss, &*hit}) {
    SCOPED_TRACE(fd == &*hit ? "hit" : "miss");
    struct stat st;
    ASSERT_EQ(fstat(fd->get(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0400u);
    absl::StatusOr<UniqueFd> ro = (*pool)->OpenView(*fd, ViewRights{CpuAccess::kRead});
    ASSERT_TRUE(ro.ok()) << ro.status();
    const int result = StrangerReopenResult(ro->get());
    if (result == kCannotSwitchUid) {
      GTEST_SKIP() << "cannot switch to uid 65534 here (user namespace "
                      "without it?)";
    }
    EXPECT_EQ(result & 1, 0) << "reopened O_RDWR";
    EXPECT_EQ(result & 2, 0) << "reopened O_WRONLY";
    EXPECT_EQ(result & 4, 0) << "fchmod'ed the inode";
    EXPECT_EQ(result, 0);
  }
}

}  // namespace
}  // namespace halloc
