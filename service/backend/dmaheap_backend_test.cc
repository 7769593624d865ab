// The dmaheap backend against a fake heap node and fake /dev/dma_heap
// directories: which heap it picks, what it asks the kernel for, how errors
// map, and that every narrower right is refused. (Real heaps are tested in
// qemu: tests/kernel/stock_backends_test.cc.)
#include "service/backend/dmaheap_backend.h"

#include <fcntl.h>
#include <linux/dma-heap.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::HasSubstr;

struct Calls {
  std::vector<dma_heap_allocation_data> allocs;
  std::vector<std::string> names;
  int fail_alloc = 0;  // errno to fail Alloc with
};

// Hands out memfds as stand-in dma-bufs.
class FakeNode : public DmaHeapNode {
 public:
  explicit FakeNode(Calls* calls) : calls_(calls) {}
  int Alloc(dma_heap_allocation_data* data) override {
    calls_->allocs.push_back(*data);
    if (calls_->fail_alloc != 0) return calls_->fail_alloc;
    const int fd = memfd_create("fake-dmabuf", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(data->len)) != 0) return errno;
    data->fd = static_cast<uint32_t>(fd);
    return 0;
  }
  int SetName(int, const char* name) override {
    calls_->names.emplace_back(name);
    return 0;
  }

 private:
  Calls* calls_;
};

// A scratch directory standing in for /dev/dma_heap, holding `heaps`.
class FakeHeapDir {
 public:
  explicit FakeHeapDir(const std::vector<std::string>& heaps) {
    for (const std::string& h : heaps) std::ofstream(dir_ / h).put('\n');
  }
  const std::string& path() const { return dir_.path(); }

 private:
  testing::TempDir dir_{"dmaheap-test"};
};

TEST(ChooseDmaHeapTest, NamedHeapMustExist) {
  FakeHeapDir dir({"linux,cma", "system"});
  EXPECT_EQ(*ChooseDmaHeap(dir.path(), "linux,cma"), "linux,cma");
  absl::StatusOr<std::string> missing = ChooseDmaHeap(dir.path(), "nosuch");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("linux,cma, system"));
}

// Unnamed, only a general-purpose heap is chosen: a vendor's secure or
// carveout heap, or the CMA area cameras need, only by name (it took the
// first in name order, or CMA, before).
TEST(ChooseDmaHeapTest, UnnamedChoosesOnlyAGeneralPurposeHeap) {
  {
    FakeHeapDir dir({"a-vendor", "linux,cma", "system"});
    EXPECT_EQ(*ChooseDmaHeap(dir.path(), ""), "system");
  }
  {
    FakeHeapDir dir({"halloc-contig", "halloc-protected", "halloc-system"});
    EXPECT_EQ(*ChooseDmaHeap(dir.path(), ""), "halloc-system");
  }
  for (const std::vector<std::string>& heaps :
       {std::vector<std::string>{"a-vendor", "linux,cma"},
        std::vector<std::string>{"reserved", "secure"}, std::vector<std::string>{"zz", "c", "b"}}) {
    FakeHeapDir dir(heaps);
    absl::StatusOr<std::string> chosen = ChooseDmaHeap(dir.path(), "");
    EXPECT_EQ(chosen.status().code(), absl::StatusCode::kFailedPrecondition)
        << (chosen.ok() ? *chosen : "");
    EXPECT_THAT(std::string(chosen.status().message()), HasSubstr("--dma_heap"));
    EXPECT_EQ(*ChooseDmaHeap(dir.path(), heaps.front()), heaps.front()) << "by name it is";
  }
}

TEST(ChooseDmaHeapTest, NoHeapsIsFailedPrecondition) {
  FakeHeapDir empty({});
  EXPECT_EQ(ChooseDmaHeap(empty.path(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ChooseDmaHeap("/nonexistent/dma_heap", "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(DmaHeapBackend::Create({"/nonexistent/dma_heap", ""}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(DmaHeapBackendTest, CreateOpensTheChosenNodeAndClosesItWithTheBackend) {
  FakeHeapDir dir({"linux,cma", "system"});
  const int before = dup(0);
  close(before);
  {
    absl::StatusOr<std::unique_ptr<DmaHeapBackend>> b = DmaHeapBackend::Create({dir.path(), ""});
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->heap(), "system");
    EXPECT_EQ((*b)->name(), "dmaheap");
    EXPECT_TRUE((*b)->MakesDmaBufs());
  }
  const int after = dup(0);  // the lowest free fd again: nothing leaked
  close(after);
  EXPECT_EQ(after, before);
}

TEST(DmaHeapBackendTest, AllocatesReadWriteCloexecAndNamesTheBuffer) {
  Calls calls;
  auto b = DmaHeapBackend::CreateWithNode(std::make_unique<FakeNode>(&calls), "system");
  for (uint64_t size : {uint64_t{4096}, uint64_t{1} << 20}) {
    SCOPED_TRACE(size);
    absl::StatusOr<UniqueFd> fd = b->Allocate({size, "frame", 0, std::nullopt});
    ASSERT_TRUE(fd.ok()) << fd.status();
    EXPECT_EQ(calls.allocs.back().len, size);
    EXPECT_EQ(calls.allocs.back().fd_flags, static_cast<uint32_t>(O_RDWR | O_CLOEXEC));
    EXPECT_EQ(calls.allocs.back().heap_flags, 0u);
  }
  EXPECT_EQ(calls.names, (std::vector<std::string>{"halloc:frame", "halloc:frame"}));
  EXPECT_EQ(b->Allocate({0, "zero", 0, std::nullopt}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls.allocs.size(), 2u);  // size 0 never reached the kernel
}

TEST(DmaHeapBackendTest, KernelErrorsMapToStatusCodes) {
  Calls calls;
  auto b = DmaHeapBackend::CreateWithNode(std::make_unique<FakeNode>(&calls), "linux,cma");
  calls.fail_alloc = ENOMEM;
  absl::StatusOr<UniqueFd> fd = b->Allocate({4096, "x", 0, std::nullopt});
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("linux,cma"));
  calls.fail_alloc = EINVAL;  // the size was hallocd's to check: its own doing
  EXPECT_EQ(b->Allocate({4096, "x", 0, std::nullopt}).status().code(), absl::StatusCode::kInternal);
}

TEST(DmaHeapBackendTest, EnforcesReadWriteOnlyAndRefusesEveryNarrowing) {
  Calls calls;
  auto b = DmaHeapBackend::CreateWithNode(std::make_unique<FakeNode>(&calls), "system");
  EXPECT_TRUE(b->CanEnforce(CpuAccess::kReadWrite));
  // A dma-buf's end raises no event: released ones are asked about.
  EXPECT_EQ(b->last_reference(), halloc::Backend::LastReference::kPolled);
  EXPECT_FALSE(b->CanEnforce(CpuAccess::kRead));
  EXPECT_FALSE(b->CanEnforce(CpuAccess::kNone));
  EXPECT_FALSE(b->CanLimitAttach());
  EXPECT_FALSE(b->CanProtect());
  absl::StatusOr<UniqueFd> fd = b->Allocate({4096, "x", 0, std::nullopt});
  ASSERT_TRUE(fd.ok());
  EXPECT_FALSE(b->NeedsView(ViewRights{}));
  ASSERT_TRUE(b->OpenView(*fd, ViewRights{}).ok());
  for (const ViewRights& rights :
       {ViewRights{CpuAccess::kRead, std::nullopt}, ViewRights{CpuAccess::kNone, std::nullopt},
        ViewRights{CpuAccess::kReadWrite, std::vector<std::string>{"vgem"}}}) {
    EXPECT_TRUE(b->NeedsView(rights));
    absl::StatusOr<UniqueFd> view = b->OpenView(*fd, rights);
    EXPECT_EQ(view.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(view.status().message()), HasSubstr("dmaheap backend cannot"));
  }
}

}  // namespace
}  // namespace halloc
