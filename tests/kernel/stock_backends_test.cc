// hallocd's backends for stock kernels, on real kernel objects: `dmaheap`
// against the module's own heap node /dev/dma_heap/halloc-system through
// the upstream dma-heap UAPI alone, and `udmabuf` against udmabuf.ko (built
// out of tree by tools/kernel-test.sh). Both give real dma-bufs: mappable,
// zero-filled, importable by vgem; both refuse every right narrower than
// read-write, because a plain dma-buf fd carries none (plain_view.h).
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "service/backend/dmaheap_backend.h"
#include "service/backend/udmabuf_backend.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

constexpr const char* kUdmabufPath = "/dev/udmabuf";

enum class Kind { kDmaHeap, kUdmabuf };

std::string KindName(const ::testing::TestParamInfo<Kind>& info) {
  return info.param == Kind::kDmaHeap ? "dmaheap" : "udmabuf";
}

class StockBackendTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    if (GetParam() == Kind::kDmaHeap) {
      // The module's system heap, through the upstream UAPI only.
      absl::StatusOr<std::unique_ptr<halloc::DmaHeapBackend>> b =
          halloc::DmaHeapBackend::Create({"/dev/dma_heap", HALLOC_HEAP_SYSTEM});
      if (!b.ok()) {
        if (!Env("HALLOC_KO").empty()) FAIL() << b.status();
        GTEST_SKIP() << "no halloc-system heap node: " << b.status();
      }
      EXPECT_EQ((*b)->heap(), HALLOC_HEAP_SYSTEM);
      backend_ = *std::move(b);
    } else {
      absl::StatusOr<std::unique_ptr<halloc::UdmabufBackend>> b =
          halloc::UdmabufBackend::Create(kUdmabufPath);
      if (!b.ok()) {
        // tools/kernel-test.sh loads it; anywhere else it may be missing.
        if (!Env("UDMABUF_KO").empty()) FAIL() << "udmabuf.ko was loaded: " << b.status();
        GTEST_SKIP() << "udmabuf.ko is not loaded (no " << kUdmabufPath << "): " << b.status();
      }
      backend_ = *std::move(b);
    }
  }

  halloc::UniqueFd Allocate(uint64_t size, const char* name = "stock") {
    absl::StatusOr<halloc::UniqueFd> fd = backend_->Allocate({size, name, 0, std::nullopt});
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *std::move(fd) : halloc::UniqueFd();
  }

  std::unique_ptr<halloc::Backend> backend_;
};

TEST_P(StockBackendTest, AllocatesZeroFilledMappableDmaBufsAcrossSizes) {
  for (uint64_t size : {uint64_t{4096}, uint64_t{64} << 10, uint64_t{1} << 20,
                        uint64_t{8} << 20}) {
    SCOPED_TRACE(size);
    halloc::UniqueFd fd = Allocate(size);
    ASSERT_TRUE(fd.is_valid());
    EXPECT_EQ(lseek(fd.get(), 0, SEEK_END), static_cast<off_t>(size)) << "a dma-buf's size";
    EXPECT_EQ(fcntl(fd.get(), F_GETFL) & O_ACCMODE, O_RDWR);
    EXPECT_NE(fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
    Mapping w = Map(fd.get(), size);
    ASSERT_TRUE(w.valid()) << strerror(errno);
    EXPECT_TRUE(AllBytesAre(w.data(), size, 0));
    ASSERT_EQ(Sync(fd.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW), 0);
    memset(w.data(), 0xa5, size);
    ASSERT_EQ(Sync(fd.get(), DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW), 0);
    Mapping r = Map(fd.get(), size, PROT_READ);
    ASSERT_TRUE(r.valid());
    EXPECT_TRUE(AllBytesAre(r.data(), size, 0xa5)) << "one memory behind both mappings";
  }
}

TEST_P(StockBackendTest, TheBufferIsNamed) {
  halloc::UniqueFd fd = Allocate(4096, "frame7");
  ASSERT_TRUE(fd.is_valid());
  const std::string fdinfo = ReadFile("/proc/self/fdinfo/" + std::to_string(fd.get()));
  EXPECT_NE(fdinfo.find("halloc:frame7"), std::string::npos) << fdinfo;
}

TEST_P(StockBackendTest, VgemImportsIt) {
  UniqueFd vgem = OpenVgem();
  if (!vgem.valid()) GTEST_SKIP() << "no vgem DRM device (modprobe vgem)";
  halloc::UniqueFd fd = Allocate(1 << 20);
  ASSERT_TRUE(fd.is_valid());
  const int64_t handle = Import(vgem.get(), fd.get());
  ASSERT_GT(handle, 0) << strerror(static_cast<int>(-handle));
  GemHandle gem(vgem.get(), static_cast<uint32_t>(handle));
  // The import holds the buffer: it stays importable under the same handle.
  EXPECT_EQ(Import(vgem.get(), fd.get()), handle);
}

TEST_P(StockBackendTest, RefusesEveryNarrowerRightWithFailedPrecondition) {
  EXPECT_TRUE(backend_->CanEnforce(halloc::CpuAccess::kReadWrite));
  EXPECT_FALSE(backend_->CanEnforce(halloc::CpuAccess::kRead));
  EXPECT_FALSE(backend_->CanEnforce(halloc::CpuAccess::kNone));
  EXPECT_FALSE(backend_->CanLimitAttach());
  EXPECT_FALSE(backend_->CanProtect());
  halloc::UniqueFd fd = Allocate(4096);
  ASSERT_TRUE(fd.is_valid());
  for (const halloc::ViewRights& rights :
       {halloc::ViewRights{halloc::CpuAccess::kRead, std::nullopt},
        halloc::ViewRights{halloc::CpuAccess::kNone, std::nullopt},
        halloc::ViewRights{halloc::CpuAccess::kReadWrite, std::vector<std::string>{"vgem"}}}) {
    EXPECT_EQ(backend_->OpenView(fd, rights).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  // Why: the fd is the only handle there is. A dma-buf cannot be reopened
  // (its inode's f_op is no_open_fops), so no read-only copy can be made.
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  errno = 0;
  UniqueFd reopened(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_FALSE(reopened.valid());
  EXPECT_EQ(errno, ENXIO);
}

INSTANTIATE_TEST_SUITE_P(Backends, StockBackendTest,
                         ::testing::Values(Kind::kDmaHeap, Kind::kUdmabuf), KindName);

// udmabuf.ko's own limit (size_limit_mb, 64 MiB by default; UDMABUF_CREATE
// says EINVAL past it) comes back as RESOURCE_EXHAUSTED naming the limit
// read from the module's parameter: hallocd's room, not the caller's error.
TEST(UdmabufGuestTest, OverTheModulesSizeLimitIsResourceExhausted) {
  absl::StatusOr<std::unique_ptr<halloc::UdmabufBackend>> b =
      halloc::UdmabufBackend::Create(kUdmabufPath);
  if (!b.ok()) {
    if (!Env("UDMABUF_KO").empty()) FAIL() << "udmabuf.ko was loaded: " << b.status();
    GTEST_SKIP() << "udmabuf.ko is not loaded: " << b.status();
  }
  const std::string limit = ReadFile("/sys/module/udmabuf/parameters/size_limit_mb");
  const uint64_t mb = limit.empty() ? 64 : std::stoull(limit);
  absl::StatusOr<halloc::UniqueFd> fd =
      (*b)->Allocate({(mb + 1) << 20, "too-big", 0, std::nullopt});
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kResourceExhausted) << fd.status();
  EXPECT_NE(fd.status().message().find(absl::StrCat("at most ", mb, " MiB")),
            absl::string_view::npos)
      << fd.status();
}

}  // namespace
}  // namespace halloc_test
