#include "service/backend/registry.h"

#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::HasSubstr;

TEST(BackendRegistryTest, CreatesByNameAndProbes) {
  // The kernel heaps come first in probe order when halloc_heap.ko is loaded
  // (the in-guest suite covers that case); on a host without it, memfd.
  const bool module = access("/dev/halloc", F_OK) == 0 &&
                      access("/dev/dma_heap/halloc-system", F_OK) == 0;
  EXPECT_EQ((*CreateBackend("memfd"))->name(), "memfd");
  EXPECT_EQ((*CreateBackend("memfd-pool"))->name(), "memfd");
  EXPECT_EQ((*CreateBackend("auto"))->name(), module ? "halloc" : "memfd");
  EXPECT_EQ(CreateBackend("nosuch").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CreateBackend("dmaheap").status().code(),
            absl::StatusCode::kFailedPrecondition);  // not built yet
  if (!module) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("halloc");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("halloc_heap.ko"));
  }
}

TEST(BackendRegistryTest, HeapsAreWhatBackendsServe) {
  const std::vector<std::string> heaps = KnownHeaps();
  EXPECT_EQ(std::count(heaps.begin(), heaps.end(), "memfd"), 1);
  EXPECT_EQ(std::count(heaps.begin(), heaps.end(), "memfd-pool"), 0);
  EXPECT_EQ(HeapOfBackend("memfd-pool"), "memfd");
  EXPECT_EQ(HeapOfBackend("halloc"), "halloc");
  EXPECT_EQ(HeapOfBackend("nosuch"), "");
  for (const std::string& name : KnownBackends()) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(name);
    if (b.ok()) EXPECT_EQ((*b)->name(), HeapOfBackend(name)) << name;
  }
}

}  // namespace
}  // namespace halloc
