// kernel_bench: halloc_heap.ko's figures (issue 12, item 7), each beside a
// floor measured in the same run, in the qemu guest that
// `tools/kernel-test.sh --bench-kernel` boots (root, the module, vgem).
//
//   kernel_bench [--quick] [--deferred=PATH]
//
// Rows (p50 and p99, microseconds):
//   system.alloc_close.SIZE   DMA_HEAP_IOCTL_ALLOC on halloc-system + close,
//                             timed call by call interleaved with vgem's
//                             CREATE_DUMB + PRIME export + close + GEM close
//                             (target <= 1.0x);
//   deferred.alloc_close.SIZE the same on halloc-deferred, whose buffers,
//                             like vgem's, get pages only at first use:
//                             the like-for-like lazy pair (same target);
//   system.first_use.SIZE     the same, but the dma-buf also mmapped, every
//                             page written, unmapped and closed, so vgem's
//                             lazily allocated pages count too (same target);
//   pool.{warm,cold}.8MiB     the allocation ioctl alone, interleaved: with
//                             the page pool holding the pages (warm) and
//                             with the pool empty (checked in debugfs before
//                             every cold sample) and pool_max_mb=0, so every
//                             chunk is fresh from the page allocator and
//                             zeroed there (target: cold >= 5x warm); the
//                             closes are shown beside them, since the pool
//                             zeroes a chunk when it takes it back;
//   deferred.first_touch.SIZE halloc-deferred alloc + mmap + a write to every
//                             page, interleaved with the same on
//                             halloc-system (no target; skipped with the
//                             reason while the module has no such heap;
//                             --deferred=PATH names another node, e.g.
//                             halloc-system itself for an A/A check).
// Never a pass/fail on a timing: the exit status is 1 only when an operation
// that should work failed.
#include <errno.h>
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <xf86drm.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/report.h"
#include "tests/kernel/guest_util.h"

namespace halloc_test {
namespace {

using halloc::bench::Compare;
using halloc::bench::FloorRow;
using halloc::bench::kNaN;
using halloc::bench::Row;
using halloc::bench::Summarize;
using halloc::bench::Summary;

constexpr char kDeferredHeapPath[] = HALLOC_HEAP_DEFERRED_PATH;
constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;
constexpr int kWarmup = 3;
constexpr char kPoolMax[] = "/sys/module/halloc_heap/parameters/pool_max_mb";

// Samples per row. Under TCG an 8 MiB zeroing takes milliseconds, so the
// large sizes get fewer; the whole run stays well under 3 minutes.
struct Plan {
  std::vector<std::pair<uint64_t, int>> vs_vgem;  // size, samples
  int pool_n;
  std::vector<std::pair<uint64_t, int>> first_use;
  std::vector<std::pair<uint64_t, int>> touch;
  std::string deferred_path = kDeferredHeapPath;
};

Plan MakePlan(bool quick) {
  if (quick) return {{{4 * kKiB, 50}, {kMiB, 30}, {8 * kMiB, 20}, {32 * kMiB, 10}},
                     20, {{kMiB, 20}, {8 * kMiB, 10}}, {{kMiB, 20}, {8 * kMiB, 10}}};
  return {{{4 * kKiB, 5000}, {kMiB, 2000}, {8 * kMiB, 1000}, {32 * kMiB, 400}},
          1000, {{kMiB, 500}, {8 * kMiB, 150}}, {{kMiB, 1000}, {8 * kMiB, 300}}};
}

std::string SizeName(uint64_t size) {
  return size >= kMiB ? absl::StrCat(size / kMiB, "MiB")
                      : absl::StrCat(size / kKiB, "KiB");
}

// Microseconds one call of op took; NaN (and *err set) when it failed.
double TimeUs(const std::function<int()>& op, int* err) {
  const int64_t t0 = halloc::bench::NowNs();
  const int ret = op();
  const int64_t t1 = halloc::bench::NowNs();
  if (ret < 0) {
    *err = -ret;
    return kNaN;
  }
  return (t1 - t0) / 1e3;
}

// a and b, kWarmup + n times each, call by call, the order swapped every
// round so that neither always runs on the other's leftovers; `untimed`
// after each call (cleanup that is not part of the figure).
struct Pair {
  std::vector<double> a, b;
  int err = 0;  // the last errno either failed with
};
Pair Interleave(int n, const std::function<int()>& a,
                const std::function<int()>& b,
                const std::function<void()>& untimed = [] {}) {
  Pair p;
  auto time = [&](const std::function<int()>& op) {
    const double t = TimeUs(op, &p.err);
    untimed();
    return t;
  };
  for (int i = 0; i < kWarmup + n; ++i) {
    double ta, tb;
    if (i % 2) {
      tb = time(b);
      ta = time(a);
    } else {
      ta = time(a);
      tb = time(b);
    }
    if (i < kWarmup) continue;
    p.a.push_back(ta);
    p.b.push_back(tb);
  }
  return p;
}

// One halloc allocation, closed again: 0 or -errno.
int AllocClose(int heap_fd, uint64_t size) {
  UniqueFd fd(HeapAlloc(heap_fd, size));
  return fd.valid() ? 0 : fd.release();
}

// vgem's nearest equivalent of an allocation handed out as a dma-buf: a dumb
// buffer and its PRIME export. The dma-buf fd, or -errno; *handle holds the
// GEM handle (closed when it goes).
int VgemExport(int drm_fd, uint64_t size, std::optional<GemHandle>* handle) {
  const int64_t h = CreateDumb(drm_fd, 1024, static_cast<uint32_t>(size / 4096), 32);
  if (h < 0) return static_cast<int>(h);
  handle->emplace(drm_fd, static_cast<uint32_t>(h));
  int prime = -1;
  if (drmPrimeHandleToFD(drm_fd, (*handle)->get(), DRM_CLOEXEC | DRM_RDWR, &prime) != 0)
    return -errno;
  return prime;
}

// VgemExport, then the fd and the GEM handle closed: 0 or -errno.
int VgemCreateExport(int drm_fd, uint64_t size) {
  std::optional<GemHandle> handle;
  UniqueFd fd(VgemExport(drm_fd, size, &handle));  // closed before the handle
  return fd.valid() ? 0 : fd.release();
}

// Map a fresh dma-buf (`fd`, or -errno) and write one byte per page (the
// first touch). The fd and mapping end up in `keep`, so that the caller
// decides whether unmapping and closing are timed.
int MapTouch(int fd_or_err, uint64_t size, UniqueFd* keep_fd, Mapping* keep_map) {
  UniqueFd fd(fd_or_err);
  if (!fd.valid()) return fd.release();
  Mapping m = Map(fd.get(), size);
  if (!m.valid()) return -errno;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t off = 0; off < size; off += page) m.data()[off] = 1;
  *keep_fd = std::move(fd);
  *keep_map = std::move(m);
  return 0;
}

class Bench {
 public:
  explicit Bench(const Plan& plan) : plan_(plan) {}
  int Run();

 private:
  void VersusVgem();
  void Pool();
  void FirstUse();
  void FirstTouch();
  // p50 and p99 rows of `value` judged against `floor` (already added).
  void Judged(const std::string& name, const Summary& v,
              const std::string& floor_name, const Summary& f,
              std::optional<double> target, bool higher_is_better,
              const std::string& note = "");
  void Floors(const std::string& name, const Summary& s);
  void Failed(const std::string& what, int err);

  const Plan plan_;
  UniqueFd system_;
  std::vector<Row> rows_;
  int failures_ = 0;
};

void Bench::Failed(const std::string& what, int err) {
  std::fprintf(stderr, "kernel_bench: %s: %s\n", what.c_str(), strerror(err));
  ++failures_;
}

void Bench::Floors(const std::string& name, const Summary& s) {
  rows_.push_back(FloorRow(name + ".p50", s.p50, "us"));
  rows_.push_back(FloorRow(name + ".p99", s.p99, "us"));
}

void Bench::Judged(const std::string& name, const Summary& v,
                   const std::string& floor_name, const Summary& f,
                   std::optional<double> target, bool higher_is_better,
                   const std::string& note) {
  rows_.push_back(Compare(name + ".p50", v.p50, "us", floor_name + ".p50", f.p50,
                          target, higher_is_better));
  rows_.push_back(Compare(name + ".p99", v.p99, "us", floor_name + ".p99", f.p99,
                          target, higher_is_better));
  rows_.back().note = note;
}

void Bench::VersusVgem() {
  UniqueFd vgem = OpenVgem();
  UniqueFd deferred(open(plan_.deferred_path.c_str(), O_RDWR | O_CLOEXEC));
  for (const auto& [size, n] : plan_.vs_vgem) {
    const std::string s = SizeName(size);
    if (!vgem.valid()) {
      Row r = Compare("system.alloc_close." + s + ".p50", kNaN, "us",
                      "vgem_dumb_prime(interleaved).p50", kNaN);
      r.note = "skipped: no vgem DRM device (modprobe vgem)";
      rows_.push_back(r);
      continue;
    }
    Pair p = Interleave(
        n, [&, size = size] { return AllocClose(system_.get(), size); },
        [&, size = size] { return VgemCreateExport(vgem.get(), size); });
    if (p.err) Failed("halloc-system or vgem at " + s, p.err);
    const Summary h = Summarize(p.a), v = Summarize(p.b);
    Floors("floor.vgem_dumb_prime." + s, v);
    Judged("system.alloc_close." + s, h, "vgem_dumb_prime(interleaved)", v, 1.0,
           false,
           size > 4 * kKiB ? "vgem's shmem object gets no pages until first "
                             "use; halloc's pages are allocated and zeroed"
                           : "");
    if (!deferred.valid()) continue;  // the first_touch rows say why
    Pair d = Interleave(
        n, [&, size = size] { return AllocClose(deferred.get(), size); },
        [&, size = size] { return VgemCreateExport(vgem.get(), size); });
    if (d.err) Failed("halloc-deferred or vgem at " + s, d.err);
    const Summary dh = Summarize(d.a), dv = Summarize(d.b);
    Floors("floor.vgem_dumb_prime.lazy." + s, dv);
    Judged("deferred.alloc_close." + s, dh, "vgem_dumb_prime.lazy(interleaved)", dv, 1.0,
           false);
  }
}

// Warm and cold 8 MiB allocations, call by call: the warm one takes the
// pool's 8 MiB and stays open while the cold one is allocated with the pool
// empty and pool_max_mb=0 (so its close frees to the page allocator); the
// warm close then refills the pool for the next round.
void Bench::Pool() {
  const uint64_t size = 8 * kMiB;
  const std::string pool_mb = ModuleParamText("pool_max_mb");
  if (ModuleParam("pool_max_mb") < 8) {
    Failed("pool_max_mb is below 8: no warm 8 MiB allocation", EINVAL);
    return;
  }
  std::vector<double> warm, warm_close, cold, cold_close;
  int err = 0, not_empty = 0;
  {
    ScopedParam restore("pool_max_mb", pool_mb);  // put back on every path
    // Empty the pool through its shrinker (drop_caches runs every one),
    // then put exactly one 8 MiB allocation's worth in.
    if (!restore.ok() || !WriteFile(kPoolMax, "0") ||
        !WriteFile("/proc/sys/vm/drop_caches", "2")) {
      Failed("cannot set pool_max_mb or write drop_caches", errno);
      return;
    }
    if (const long left = PoolPages(); left != 0) {
      Failed(absl::StrCat("the pool kept ", left, " pages after drop_caches"), EBUSY);
      return;
    }
    WriteFile(kPoolMax, pool_mb);
    AllocClose(system_.get(), size);
    auto alloc = [&](UniqueFd* fd) {
      return [&, fd] { fd->reset(HeapAlloc(system_.get(), size));
                       return fd->valid() ? 0 : fd->get(); };
    };
    auto close_fd = [](UniqueFd* fd) { return [fd] { fd->reset(); return 0; }; };
    for (int i = 0; i < kWarmup + plan_.pool_n; ++i) {
      UniqueFd w, c;
      const double wa = TimeUs(alloc(&w), &err);
      WriteFile(kPoolMax, "0");
      // Cold means fresh pages: the pool must be empty here.
      const bool empty = PoolPages() == 0;
      not_empty += !empty;
      const double ca = TimeUs(alloc(&c), &err);
      const double cc = TimeUs(close_fd(&c), &err);
      WriteFile(kPoolMax, pool_mb);
      const double wc = TimeUs(close_fd(&w), &err);
      if (i < kWarmup) continue;
      warm.push_back(wa);
      warm_close.push_back(wc);
      cold.push_back(empty ? ca : kNaN);
      cold_close.push_back(empty ? cc : kNaN);
    }
  }
  if (err) Failed("8 MiB allocation", err);
  if (not_empty) Failed(absl::StrCat(not_empty, " cold samples found the pool not empty"), EBUSY);
  if (ModuleParamText("pool_max_mb") != pool_mb) Failed("pool_max_mb not restored", EIO);
  const Summary w = Summarize(warm), c = Summarize(cold);
  Floors("pool.warm.8MiB.alloc", w);
  Judged("pool.cold.8MiB.alloc", c, "pool.warm.8MiB.alloc(interleaved)", w, 5.0, true,
         "ratio = cold / warm: how many times faster a pooled allocation is");
  Floors("pool.warm.8MiB.close", Summarize(warm_close));
  rows_.back().note = "the pool zeroes each chunk as it takes it back";
  Floors("pool.cold.8MiB.close", Summarize(cold_close));
  rows_.back().note = "pool_max_mb=0: the pages go back to the page allocator";
}

// The whole life of a buffer someone writes: allocate (export), map, touch
// every page, unmap, close. vgem's pages now count too.
void Bench::FirstUse() {
  UniqueFd vgem = OpenVgem();
  if (!vgem.valid()) return;  // VersusVgem() said why
  for (const auto& [size, n] : plan_.first_use) {
    const std::string s = SizeName(size);
    auto halloc = [&, size = size] {
      UniqueFd fd;
      Mapping m;
      return MapTouch(HeapAlloc(system_.get(), size), size, &fd, &m);
    };
    auto vgem_use = [&, size = size] {
      std::optional<GemHandle> handle;
      UniqueFd fd;
      Mapping m;
      return MapTouch(VgemExport(vgem.get(), size, &handle), size, &fd, &m);
    };
    Pair p = Interleave(n, halloc, vgem_use);
    if (p.err) Failed("first use at " + s, p.err);
    const Summary h = Summarize(p.a), v = Summarize(p.b);
    Floors("floor.vgem_first_use." + s, v);
    Judged("system.first_use." + s, h, "vgem_first_use(interleaved)", v, 1.0, false,
           "alloc or dumb+PRIME, mmap the dma-buf, write every page, munmap, close");
  }
}

void Bench::FirstTouch() {
  UniqueFd deferred(open(plan_.deferred_path.c_str(), O_RDWR | O_CLOEXEC));
  const int open_err = errno;
  for (const auto& [size, n] : plan_.touch) {
    const std::string s = SizeName(size);
    const std::string floor = "system.first_touch(interleaved)";
    if (!deferred.valid()) {
      Row r = Compare("deferred.first_touch." + s + ".p50", kNaN, "us",
                      floor + ".p50", kNaN);
      r.note = absl::StrCat("skipped: ", plan_.deferred_path, ": ",
                            strerror(open_err), " (no deferred heap in this module)");
      rows_.push_back(r);
      continue;
    }
    UniqueFd keep_fd;
    Mapping keep_map;
    auto touch = [&, size = size](int heap) {
      return MapTouch(HeapAlloc(heap, size), size, &keep_fd, &keep_map);
    };
    Pair p = Interleave(n, [&] { return touch(deferred.get()); },
                        [&] { return touch(system_.get()); },
                        [&] { keep_map.reset(); keep_fd.reset(); });
    if (p.err) Failed("first touch at " + s, p.err);
    const Summary d = Summarize(p.a), e = Summarize(p.b);
    Floors("floor.system.first_touch." + s, e);
    Judged("deferred.first_touch." + s, d, floor, e, std::nullopt, false);
  }
}

int Bench::Run() {
  system_.reset(open(HALLOC_HEAP_SYSTEM_PATH, O_RDWR | O_CLOEXEC));
  if (!system_.valid()) {
    std::fprintf(stderr, "kernel_bench: %s: %s (is halloc_heap.ko loaded?)\n",
                 HALLOC_HEAP_SYSTEM_PATH, strerror(errno));
    return 1;
  }
  const int64_t t0 = halloc::bench::NowNs();
  utsname u = {};
  uname(&u);
  std::printf("# kernel_bench: Linux %s, %ld CPUs, pool_max_mb %ld, load %s",
              u.release, sysconf(_SC_NPROCESSORS_ONLN), ModuleParam("pool_max_mb"),
              ReadFile("/proc/loadavg").c_str());
  std::fflush(stdout);
  VersusVgem();
  FirstUse();
  Pool();
  FirstTouch();
  halloc::bench::PrintRows(rows_);
  std::printf("# %d failures, %.0f s\n", failures_,
              (halloc::bench::NowNs() - t0) / 1e9);
  return failures_ ? 1 : 0;
}

}  // namespace
}  // namespace halloc_test

int main(int argc, char** argv) {
  const halloc::bench::Args args(argc - 1, argv + 1);
  halloc_test::Plan plan = halloc_test::MakePlan(args.Has("quick"));
  plan.deferred_path = args.Str("deferred", plan.deferred_path);
  halloc_test::Bench bench(plan);
  return bench.Run();
}
