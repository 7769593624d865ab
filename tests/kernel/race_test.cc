// Threads closing, viewing, mapping, attaching (vgem) and syncing the same
// buffer at once. Passing means: no crash here and no splat in the guest's
// kernel log (tools/kernel-test.sh checks), and nothing leaks.
#include <errno.h>
#include <sys/ioctl.h>
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

}  // namespace
}  // namespace halloc_test
