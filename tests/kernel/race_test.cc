// Threads closing, viewing, mapping, attaching (vgem) and syncing the same
// buffer at once. Passing means: no crash here and no splat in the guest's
// kernel log (tools/kernel-test.sh checks), and nothing leaks.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xf86drm.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

constexpr size_t kSize = 256 * 1024;
constexpr auto kDuration = std::chrono::milliseconds(1500);

class RaceTest : public HallocTest {};

TEST_F(RaceTest, ConcurrentCloseMapAttachSync) {
  std::atomic<int> current{Alloc(Heap::kSystem, kSize).release()};
  ASSERT_GE(current.load(), 0);
  std::atomic<bool> stop{false};
  std::atomic<long> ops{0};
  const int ctl = ctl_.get();
  const int heaps[2] = {system_.get(), contig_.get()};
  const bool have_vgem = OpenVgem().valid();

  auto worker = [&](int role) {
    std::mt19937 rng(1234 + role);
    UniqueFd vgem = role == 3 ? OpenVgem() : UniqueFd();
    while (!stop.load()) {
      // Take a private reference; the fd may be closed under us, which is
      // part of the test (dup then fails, or names another file).
      UniqueFd fd(dup(current.load()));
      if (!fd.valid()) continue;
      switch (role) {
        case 0: {  // replace the shared fd by a view of it, close the old
          int view = MakeView(ctl, fd.get(), {});
          if (view >= 0) close(current.exchange(view));
          break;
        }
        case 1: {  // map, touch, unmap
          Mapping m = Map(fd.get(), kSize);
          if (m.valid()) m.data()[rng() % kSize] = uint8_t(rng());
          break;
        }
        case 2:  // CPU access brackets
          Sync(fd.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW);
          Sync(fd.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW);
          break;
        case 3: {  // attach + map by vgem, then detach
          uint32_t handle = 0;
          if (vgem.valid() && drmPrimeFDToHandle(vgem.get(), fd.get(), &handle) == 0)
            drmCloseBufferHandle(vgem.get(), handle);
          break;
        }
        case 4: {  // accounting, names, narrower views
          halloc_buffer_info info;
          Info(ctl, fd.get(), &info);
          char name[] = "race";
          Ioctl(fd.get(), DMA_BUF_SET_NAME, name);
          ViewSpec spec;
          spec.cpu = HALLOC_CPU_READ;
          spec.restrict_attach = true;
          spec.drivers = {"vgem"};
          UniqueFd view(MakeView(ctl, fd.get(), spec));
          if (view.valid()) Map(view.get(), kSize, PROT_READ);
          break;
        }
        case 5: {  // unrelated allocations churn the pool
          UniqueFd other(HeapAlloc(heaps[rng() % 2], (rng() % 64 + 1) * 4096));
          if (other.valid()) Map(other.get(), 4096);
          break;
        }
      }
      ops.fetch_add(1);
    }
  };

  std::vector<std::thread> threads;
  for (int role = 0; role < 6; ++role)
    for (int copies = 0; copies < (role == 0 ? 1 : 2); ++copies)
      threads.emplace_back(worker, role);
  std::this_thread::sleep_for(kDuration);
  stop = true;
  for (auto& t : threads) t.join();
  RecordProperty("operations", std::to_string(ops.load()));
  if (!have_vgem) RecordProperty("note", "vgem missing: attach role idle");
  EXPECT_GT(ops.load(), 100);

  UniqueFd last(current.exchange(-1));
  halloc_buffer_info info = InfoOf(last.get());
  EXPECT_EQ(info.dmabufs, 1u) << "views leaked";
  EXPECT_EQ(info.attachments, 0u);
  EXPECT_EQ(info.maps, 0u);
  EXPECT_EQ(info.mmaps, 0u);
  EXPECT_EQ(info.vmaps, 0u);
  last.reset();
  std::string dbg = ReadFile("/sys/kernel/debug/halloc/buffers");
  EXPECT_NE(dbg.find("total: 0 buffers"), std::string::npos) << dbg;
}

// Revoke racing the ways a view's memory gets mapped: a process that maps,
// touches and unmaps the view in a loop, and forks children that inherit a
// touched mapping (fork copies the PFN-mapped PTEs), while the view is
// revoked at a random moment. After the revoke nothing reaches the buffer
// through the view: a mapping made at any time faults (SIGBUS) at its next
// touch, and a new mmap is refused. Each process that touched a mapping
// after the revoke and lived reports it.
TEST_F(RaceTest, RevokeLeavesNoMappingRacingMapsAndForks) {
  const size_t size = 16 * PageAlign(1);
  UniqueFd buf = Alloc(Heap::kSystem, size);
  ASSERT_TRUE(buf.valid());
  std::mt19937 rng(99);
  int rounds = 0, faulted = 0, survived = 0;
  const auto end = std::chrono::steady_clock::now() + kDuration;
  while (std::chrono::steady_clock::now() < end) {
    ++rounds;
    ViewSpec spec;
    spec.cpu = HALLOC_CPU_READ;
    UniqueFd view(MakeView(ctl_.get(), buf.get(), spec));
    ASSERT_TRUE(view.valid()) << strerror(-view.get());
    const uint64_t id = InfoOf(view.get()).view_id;
    int revoked[2], report[2];  // revoked: EOF once the view is; report: a byte per survivor
    ASSERT_EQ(pipe2(revoked, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(report, O_CLOEXEC), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(revoked[1]);
      close(report[0]);
      auto is_revoked = [&] {
        pollfd p{revoked[0], POLLIN, 0};
        return poll(&p, 1, 0) == 1;
      };
      auto touch = [&](const Mapping& m) {
        for (size_t off = 0; off < size; off += PageAlign(1)) {
          volatile uint8_t sink = m.data()[off];
          (void)sink;
        }
      };
      std::mt19937 child_rng(rounds);
      for (int heirs = 0;;) {
        const bool was_revoked = is_revoked();
        Mapping m = Map(view.get(), size, PROT_READ);
        if (!m.valid()) _exit(0);  // refused: the revoke came first
        touch(m);
        if (heirs < 4 && child_rng() % 4 == 0) {
          const pid_t heir = fork();
          if (heir == 0) {
            char c;
            (void)!read(revoked[0], &c, 1);  // EOF: revoked
            touch(m);
            (void)!write(report[1], "h", 1);  // the inherited mapping lived on
            _exit(0);
          }
          if (heir > 0) ++heirs;
        }
        if (was_revoked || is_revoked()) {
          touch(m);
          (void)!write(report[1], "c", 1);  // mapped or kept past the revoke
          _exit(0);
        }
      }
    }
    close(revoked[0]);
    close(report[1]);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ASSERT_EQ(Revoke(ctl_.get(), buf.get(), id), 0);
    close(revoked[1]);
    char c;
    while (read(report[0], &c, 1) == 1) ++survived;  // EOF: every holder gone
    close(report[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) ++faulted;
  }
  RecordProperty("rounds", std::to_string(rounds));
  RecordProperty("faulted", std::to_string(faulted));
  EXPECT_EQ(survived, 0) << "a mapping of the view still read the buffer after its revoke";
  EXPECT_GT(faulted, 0) << "no round had a mapping at its revoke: nothing raced";
  // Reaped by nobody here: the heirs of children that died are init's now.
}

}  // namespace
}  // namespace halloc_test
