#include "service/backend/registry.h"

#include <unistd.h>

#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::HasSubstr;

// The lowest free fd number (what the next open gets).
int LowestFreeFd() {
  const int fd = dup(0);
  close(fd);
  return fd;
}

TEST(BackendRegistryTest, CreatesByNameAndProbes) {
  // Probe order: the kernel heaps when halloc_heap.ko is loaded (the
  // in-guest suite covers that case), then an upstream dma-heap, udmabuf,
  // and memfd.
  const bool module = access("/dev/halloc", F_OK) == 0 &&
                      access("/dev/dma_heap/halloc-system", F_OK) == 0;
  const bool dma_heap = CreateBackend("dmaheap").ok();
  const bool udmabuf = access("/dev/udmabuf", F_OK) == 0;
  const char* expected = module     ? "halloc"
                         : dma_heap ? "dmaheap"
                         : udmabuf  ? "udmabuf"
                                    : "memfd";
  EXPECT_EQ((*CreateBackend("memfd"))->name(), "memfd");
  EXPECT_EQ((*CreateBackend("memfd-pool"))->name(), "memfd");
  std::vector<std::string> skipped;
  EXPECT_EQ((*CreateBackend("auto", {}, &skipped))->name(), expected);
  // What auto passed over is said, each with its reason (hallocd logs it).
  if (std::string(expected) == "memfd") {
    ASSERT_EQ(skipped.size(), 3u) << absl::StrJoin(skipped, "\n");
    EXPECT_THAT(skipped[0], HasSubstr("halloc: ")) << skipped[0];
    EXPECT_THAT(skipped[0], HasSubstr("/dev/")) << skipped[0];
    EXPECT_THAT(skipped[1], HasSubstr("dmaheap: ")) << skipped[1];
    EXPECT_THAT(skipped[2], HasSubstr("udmabuf: ")) << skipped[2];
  }
  EXPECT_EQ(CreateBackend("nosuch").status().code(), absl::StatusCode::kNotFound);
  if (!dma_heap) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("dmaheap");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("dma_heap"));
  }
  if (!udmabuf) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("udmabuf");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("/dev/udmabuf"));
  }
  // A named heap that is not there is refused, not replaced by another.
  EXPECT_EQ(CreateBackend("dmaheap", {"no-such-heap"}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  if (!module) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("halloc");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("halloc_heap.ko"));
  }
}

// memfd-pool takes the operator's bounds (--pool_max_bytes): the most it
// may stock, in one-page buffers, follows them; 0 stocks nothing.
TEST(BackendRegistryTest, ThePoolsBoundsAreTheConfigs) {
  BackendConfig config;
  absl::StatusOr<std::unique_ptr<Backend>> pool = CreateBackend("memfd-pool", config);
  ASSERT_TRUE(pool.ok()) << pool.status();
  const uint64_t by_default = (*pool)->max_stocked_buffers();
  config.pool_max_bytes = uint64_t{1} << 20;
  pool = CreateBackend("memfd-pool", config);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->max_stocked_buffers(), (uint64_t{1} << 20) / ::sysconf(_SC_PAGESIZE));
  EXPECT_GT(by_default, (*pool)->max_stocked_buffers());
  config.pool_max_bytes = 0;
  pool = CreateBackend("memfd-pool", config);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->max_stocked_buffers(), 0u);
}

TEST(BackendRegistryTest, ProbingLeavesNoFdOpen) {
  const int before = LowestFreeFd();
  for (const char* name : {"halloc", "dmaheap", "udmabuf"}) {
    CreateBackend(name).IgnoreError();  // created and destroyed, or refused
    EXPECT_EQ(LowestFreeFd(), before) << name;
  }
  { absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("auto"); }
  EXPECT_EQ(LowestFreeFd(), before);
}

TEST(BackendRegistryTest, HeapsAreWhatBackendsServe) {
  const std::vector<std::string> heaps = KnownHeaps();
  EXPECT_EQ(std::count(heaps.begin(), heaps.end(), "memfd"), 1);
  EXPECT_EQ(std::count(heaps.begin(), heaps.end(), "memfd-pool"), 0);
  EXPECT_EQ(HeapOfBackend("memfd-pool"), "memfd");
  EXPECT_EQ(HeapOfBackend("halloc"), "halloc");
  EXPECT_EQ(HeapOfBackend("dmaheap"), "dmaheap");
  EXPECT_EQ(HeapOfBackend("udmabuf"), "udmabuf");
  for (const char* heap : {"halloc", "dmaheap", "udmabuf", "memfd"}) {
    EXPECT_EQ(std::count(heaps.begin(), heaps.end(), heap), 1) << heap;
  }
  const std::vector<std::string> backends = KnownBackends();
  EXPECT_EQ(backends, (std::vector<std::string>{"halloc", "dmaheap", "udmabuf", "memfd",
                                                "memfd-pool"}));
  EXPECT_EQ(HeapOfBackend("nosuch"), "");
  for (const std::string& name : KnownBackends()) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(name);
    if (b.ok()) EXPECT_EQ((*b)->name(), HeapOfBackend(name)) << name;
  }
}

}  // namespace
}  // namespace halloc
