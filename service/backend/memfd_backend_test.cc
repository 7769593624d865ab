#include "service/backend/memfd_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/backend/halloc_backend.h"

using ::testing::HasSubstr;

namespace halloc {
namespace {

constexpr uint64_t kPage = 4096;

TEST(MemfdBackendTest, AllocatesZeroedSealedMemoryAcrossSizes) {
  MemfdBackend backend;
  for (uint64_t size : {kPage, 16 * kPage, uint64_t{1} << 20, uint64_t{8} << 20}) {
    SCOPED_TRACE(size);
    absl::StatusOr<UniqueFd> fd = backend.Allocate({size, "t", 0});
    ASSERT_TRUE(fd.ok()) << fd.status();
    struct stat st;
    ASSERT_EQ(fstat(fd->get(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
    const int seals = fcntl(fd->get(), F_GET_SEALS);
    EXPECT_EQ(seals, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    EXPECT_NE(ftruncate(fd->get(), size * 2), 0);
    EXPECT_NE(ftruncate(fd->get(), size / 2), 0);
    EXPECT_NE(fcntl(fd->get(), F_ADD_SEALS, F_SEAL_WRITE), 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    const auto* bytes = static_cast<const unsigned char*>(p);
    for (uint64_t i = 0; i < size; i += 997) ASSERT_EQ(bytes[i], 0) << i;
    munmap(p, size);
  }
}

TEST(MemfdBackendTest, RejectsZeroSize) {
  MemfdBackend backend;
  EXPECT_EQ(backend.Allocate({0, "t", 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemfdBackendTest, ReadViewCannotBeMappedOrProtectedWritable) {
  MemfdBackend backend;
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  void* w = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0);
  ASSERT_NE(w, MAP_FAILED);
  std::memcpy(w, "pattern", 7);

  absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_EQ(mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, ro->get(), 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  void* r = mmap(nullptr, kPage, PROT_READ, MAP_SHARED, ro->get(), 0);
  ASSERT_NE(r, MAP_FAILED);
  EXPECT_EQ(std::memcmp(r, "pattern", 7), 0);  // same pages
  EXPECT_NE(mprotect(r, kPage, PROT_READ | PROT_WRITE), 0);
  EXPECT_EQ(errno, EACCES);
  EXPECT_LT(write(ro->get(), "x", 1), 0);
  munmap(r, kPage);
  munmap(w, kPage);
}

TEST(MemfdBackendTest, NoCpuAccessIsRefusedNotGranted) {
  MemfdBackend backend;
  EXPECT_FALSE(backend.CanEnforce(CpuAccess::kNone));
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(backend.OpenView(*fd, ViewRights{CpuAccess::kNone}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MemfdBackendTest, AttachLimitsHoldOnlyWithoutUdmabuf) {
  MemfdBackend without("/nonexistent/udmabuf");
  MemfdBackend with("/proc/self/exe");  // "present"
  EXPECT_TRUE(without.CanLimitAttach());
  EXPECT_FALSE(with.CanLimitAttach());
  absl::StatusOr<UniqueFd> fd = without.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  ViewRights limited{CpuAccess::kRead, std::vector<std::string>{"vgem"}};
  EXPECT_TRUE(without.OpenView(*fd, limited).ok());
  EXPECT_EQ(with.OpenView(*fd, limited).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A memfd needs a view only to narrow CPU rights.
  EXPECT_FALSE(without.NeedsView({CpuAccess::kReadWrite, std::vector<std::string>{}}));
  EXPECT_TRUE(without.NeedsView({CpuAccess::kRead, std::nullopt}));
}

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

TEST(HallocBackendTest, MissingNodesAreFailedPrecondition) {
  EXPECT_EQ(HallocBackend::Create({"/nonexistent/heap", "/dev/null"}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(HallocBackend::Create({"/dev/null", "/nonexistent/halloc"}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace halloc
