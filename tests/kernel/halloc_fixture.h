// Test fixture: the halloc heap nodes and the control node.
#ifndef HALLOC_TESTS_KERNEL_HALLOC_FIXTURE_H_
#define HALLOC_TESTS_KERNEL_HALLOC_FIXTURE_H_

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "tests/kernel/guest_util.h"

namespace halloc_test {

enum class Heap { kSystem, kContig, kProtected, kDeferred };

inline const char* HeapName(Heap heap) {
  switch (heap) {
    case Heap::kSystem: return HALLOC_HEAP_SYSTEM;
    case Heap::kContig: return HALLOC_HEAP_CONTIG;
    case Heap::kProtected: return HALLOC_HEAP_PROTECTED;
    case Heap::kDeferred: return HALLOC_HEAP_DEFERRED;
  }
  return "?";
}

inline size_t PageAlign(size_t len) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (len + page - 1) / page * page;
}

// A halloc-deferred buffer's first use on a thread of its own: the start of
// a read-write CPU bracket (DMA_BUF_SYNC_START), which backs it. Started at
// construction; joined by Join() or at destruction, so that an ASSERT that
// returns early leaves no thread running.
class FirstUseThread {
 public:
  explicit FirstUseThread(int fd)
      : start_(std::chrono::steady_clock::now()), thread_([this, fd] {
          result_ = Sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW);
          took_ = std::chrono::steady_clock::now() - start_;
          done_ = true;
        }) {}
  FirstUseThread(const FirstUseThread&) = delete;
  FirstUseThread& operator=(const FirstUseThread&) = delete;
  ~FirstUseThread() { Join(); }

  // Whether the first use has returned.
  bool done() const { return done_.load(); }
  // Waits for it: its 0 or -errno.
  int Join() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  // How long it took (once joined).
  long long took_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(took_).count();
  }

 private:
  const std::chrono::steady_clock::time_point start_;
  std::atomic<bool> done_{false};
  int result_ = -1;
  std::chrono::steady_clock::duration took_{};
  std::thread thread_;  // last: it starts once the rest is set
};

class HallocTest : public ::testing::Test {
 protected:
  void SetUp() override {
    system_.reset(open(HALLOC_HEAP_SYSTEM_PATH, O_RDWR | O_CLOEXEC));
    contig_.reset(open(HALLOC_HEAP_CONTIG_PATH, O_RDWR | O_CLOEXEC));
    protected_.reset(open(HALLOC_HEAP_PROTECTED_PATH, O_RDWR | O_CLOEXEC));
    deferred_.reset(open(HALLOC_HEAP_DEFERRED_PATH, O_RDWR | O_CLOEXEC));
    ctl_.reset(open(HALLOC_CONTROL_PATH, O_RDWR | O_CLOEXEC));
    if (!system_.valid() || !contig_.valid() || !protected_.valid() ||
        !deferred_.valid() || !ctl_.valid()) {
      std::string why = std::string("halloc_heap.ko nodes missing: ") +
                        strerror(errno);
      // Inside tools/kernel-test.sh the module must be there.
      if (!Env("HALLOC_KO").empty()) FAIL() << why;
      GTEST_SKIP() << why;
    }
  }

  int heap_fd(Heap heap) const {
    switch (heap) {
      case Heap::kSystem: return system_.get();
      case Heap::kContig: return contig_.get();
      case Heap::kProtected: return protected_.get();
      case Heap::kDeferred: return deferred_.get();
    }
    return -1;
  }

  // Allocates or fails the test (check HasFatalFailure / valid()).
  UniqueFd Alloc(Heap heap, size_t len,
                 uint32_t fd_flags = O_RDWR | O_CLOEXEC) {
    int fd = HeapAlloc(heap_fd(heap), len, fd_flags);
    EXPECT_GE(fd, 0) << "alloc " << len << " from " << HeapName(heap) << ": "
                     << strerror(-fd);
    return UniqueFd(fd);
  }

  halloc_buffer_info InfoOf(int fd) {
    halloc_buffer_info info;
    int ret = Info(ctl_.get(), fd, &info);
    EXPECT_EQ(ret, 0) << strerror(-ret);
    return info;
  }

  // Whether INFO says `fd`'s buffer is being backed now (HALLOC_INFO_BACKING).
  bool Backing(int fd) { return (InfoOf(fd).flags & HALLOC_INFO_BACKING) != 0; }

  // Polls INFO until it reports the backing `first_use` of `fd` makes under
  // way (true), or that first use returned first (false; were the buffer's
  // lock held through the backing, INFO would wait it out and never see it).
  bool SawBacking(int fd, const FirstUseThread& first_use) {
    while (!first_use.done()) {
      if (Backing(fd)) return true;
    }
    return false;
  }

  UniqueFd system_;
  UniqueFd contig_;
  UniqueFd protected_;
  UniqueFd deferred_;
  UniqueFd ctl_;
};

// HallocTest with vgem (the stand-in for a GPU or display) open, skipped
// where vgem is missing.
class VgemTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    vgem_ = OpenVgem();
    if (!vgem_.valid()) GTEST_SKIP() << "no vgem DRM device (modprobe vgem)";
  }

  UniqueFd vgem_;
};

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_HALLOC_FIXTURE_H_
