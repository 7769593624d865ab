// Test fixture: the halloc heap nodes and the control node.
#ifndef HALLOC_TESTS_KERNEL_HALLOC_FIXTURE_H_
#define HALLOC_TESTS_KERNEL_HALLOC_FIXTURE_H_

#include <gtest/gtest.h>

#include <cstring>
#include <string>

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
