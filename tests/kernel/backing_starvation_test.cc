// A deferred buffer's backing does not run on its first user's CPU share.
//
// Any holder may be the first to use a deferred buffer, a read-only one
// included, and every other first use waits for that backing: a CPU fault
// with its process's mmap_lock held. The backing ran in the first user's
// task, so an unprivileged holder that started it from a SCHED_IDLE thread
// while its own threads kept every CPU busy kept the other holders waiting
// for as long as it liked (12 s in helper-70's review, and as long as the
// hogs ran). halloc_heap.ko now backs deferred buffers on its own workqueue.
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <thread>
#include <vector>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

void PinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

// Between the test and its two children (MAP_SHARED anonymous).
struct Shared {
  std::atomic<int> stop_hogs;
  std::atomic<int> victim_ready;
  std::atomic<int> go;
  std::atomic<long long> fault_ms;  // the victim's first touch; -1 until it returns
  std::atomic<int> backer_ret;
};

TEST_F(HallocTest, AStarvedFirstUserDoesNotHoldUpAnotherHoldersFault) {
  constexpr size_t kLen = 64u << 20;
  constexpr long long kHogMs = 8000;  // the attacker's patience
  const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  UniqueFd buf = Alloc(Heap::kDeferred, kLen);
  ASSERT_TRUE(buf.valid());
  ViewSpec ro_spec;
  ro_spec.cpu = HALLOC_CPU_READ;
  UniqueFd ro(MakeView(ctl_.get(), buf.get(), ro_spec));
  ASSERT_TRUE(ro.valid());
  void* mem = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  Shared* sh = new (mem) Shared{};
  sh->fault_ms = -1;
  sh->backer_ret = 1;

  // The victim maps the buffer read-write and touches it on "go".
  const pid_t victim = fork();
  ASSERT_GE(victim, 0);
  if (victim == 0) {
    ro.reset();
    void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, buf.get(), 0);
    if (p == MAP_FAILED) _exit(2);
    sh->victim_ready = 1;
    while (!sh->go) usleep(1000);
    const long long t = NowMs();
    static_cast<volatile uint8_t*>(p)[0] = 1;  // its first CPU fault
    sh->fault_ms = NowMs() - t;
    _exit(0);
  }

  // The attacker: uid nobody, only the read-only view, two busy threads
  // on every CPU and its backing started from a SCHED_IDLE thread.
  const pid_t attacker = fork();
  ASSERT_GE(attacker, 0);
  if (attacker == 0) {
    buf.reset();
    if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) _exit(2);
    std::vector<std::thread> hogs;
    for (long c = 0; c < ncpu; c++) {
      for (int k = 0; k < 2; k++) {
        hogs.emplace_back([sh, c] {
          PinTo(static_cast<int>(c));
          while (!sh->stop_hogs) {
          }
        });
      }
    }
    usleep(200 * 1000);
    PinTo(0);
    sched_param sp{};
    if (sched_setscheduler(0, SCHED_IDLE, &sp)) _exit(3);  // no privilege needed
    sh->backer_ret = Sync(ro.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
    for (std::thread& h : hogs) h.join();
    _exit(0);
  }

  auto reap = [&] {
    sh->stop_hogs = 1;
    for (pid_t p : {victim, attacker}) {
      int st;
      for (int i = 0; i < 300 && waitpid(p, &st, WNOHANG) == 0; i++) usleep(100 * 1000);
      kill(p, SIGKILL);
      waitpid(p, &st, 0);
    }
  };
  // Once the attacker's backing is under way (or done already), the victim
  // touches the buffer; the attacker's hogs run until it returns or for
  // kHogMs.
  bool started = false;
  for (const long long w0 = NowMs(); !started && NowMs() - w0 < 30000; usleep(5000)) {
    halloc_buffer_info info;
    started = Info(ctl_.get(), buf.get(), &info) == 0 &&
              (info.flags & HALLOC_INFO_BACKING || sh->backer_ret == 0);
  }
  if (!started) reap();
  ASSERT_TRUE(started) << "the attacker's backing never started";
  while (!sh->victim_ready) usleep(1000);
  sh->go = 1;
  for (const long long go = NowMs(); sh->fault_ms < 0 && NowMs() - go < kHogMs;) usleep(20000);
  const long long fault_ms = sh->fault_ms;
  reap();
  EXPECT_GE(fault_ms, 0) << "the victim's first fault still waited after " << kHogMs
                         << " ms, while the attacker's own threads starved the backing it "
                            "started (SCHED_IDLE)";
  EXPECT_EQ(sh->backer_ret, 0);
  munmap(mem, sizeof(Shared));
}

}  // namespace
}  // namespace halloc_test
