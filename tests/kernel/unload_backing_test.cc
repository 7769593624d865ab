// Unloading while a backing runs on halloc_back: a queued backing holds a
// buffer reference but not the module, so a first user killed while it
// waits lets the module go. halloc_exit() must wait for the backing before
// it drains the page pool: 91ca5a9 drained first, and the buffer freed last
// put its pages in a pool nobody drained again (up to pool_max_mb lost;
// 70 MB in helper-72's review).
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

long long MemFreeKb() {
  sync();
  { std::ofstream("/proc/sys/vm/drop_caches") << "3\n"; }
  usleep(200 * 1000);
  return ProcField("/proc/meminfo", "MemFree");
}

TEST(UnloadBackingTest, AnUnloadWhileABackingRunsLeavesNoPagesBehind) {
  const std::string halloc_ko = Env("HALLOC_KO");
  if (halloc_ko.empty()) GTEST_SKIP() << "HALLOC_KO not set";
  ASSERT_TRUE(ModuleLoaded("halloc_heap"));
  // Settle first: the pool drained by a reload, so that it starts empty.
  ASSERT_EQ(DeleteModule("halloc_heap"), 0) << "a test before left a halloc buffer open";
  ASSERT_EQ(LoadModule(halloc_ko, ""), 0);
  for (int i = 0; i < 200 && access(HALLOC_HEAP_DEFERRED_PATH, F_OK) != 0; ++i) usleep(10000);
  sync();
  const long long free_before = MemFreeKb();

  constexpr size_t kLen = 256u << 20;  // max_buffer_mb
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    UniqueFd heap(open(HALLOC_HEAP_DEFERRED_PATH, O_RDWR | O_CLOEXEC));
    auto fail = [&](const std::string& what) {
      const std::string m = what + ": " + strerror(errno);
      (void)!write(ready[1], m.data(), m.size());
      _exit(2);
    };
    if (!heap.valid()) fail(std::string("open ") + HALLOC_HEAP_DEFERRED_PATH);
    const int fd = HeapAlloc(heap.get(), kLen);
    if (fd < 0) { errno = -fd; fail("alloc"); }
    void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) fail("mmap");
    if (write(ready[1], "R", 1) != 1) _exit(4);
    static_cast<volatile char*>(p)[0] = 1;  // the first fault: queues the backing, waits
    _exit(0);
  }
  close(ready[1]);
  char msg[256] = {};
  const ssize_t got = read(ready[0], msg, sizeof(msg) - 1);
  ASSERT_EQ(std::string(msg, got > 0 ? got : 0), "R") << "the child";
  usleep(300 * 1000);  // the backing is under way on halloc_back
  kill(child, SIGKILL);
  int st;
  waitpid(child, &st, 0);
  // The last dma-buf is gone with the child; the queued backing holds a
  // buffer reference but not the module.
  int unloaded = -1;
  long long took = 0;
  for (int i = 0; i < 100 && unloaded != 0; ++i) {
    const long long t0 = NowMs();
    unloaded = DeleteModule("halloc_heap");
    took = NowMs() - t0;
    if (unloaded != 0) usleep(10 * 1000);
  }
  ASSERT_EQ(LoadModule(halloc_ko, ""), 0) << "reload";
  sync();
  const long long free_after = MemFreeKb();
  std::fprintf(stderr, "unload during a backing: rmmod=%d took %lld ms; MemFree before %lld kB after %lld kB (%lld kB gone)\n",
               unloaded, took, free_before, free_after, free_before - free_after);
  // Exit waits for the backing (destroy_workqueue), then drains the pool.
  EXPECT_LT(free_before - free_after, 32 * 1024)
      << "kB of MemFree gone for good after the unload (the pool's pages)";
}

}  // namespace
}  // namespace halloc_test
