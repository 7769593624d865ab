// The udmabuf backend against a fake /dev/udmabuf: the memfd it hands the
// kernel (sealed as udmabuf requires, sized, zero-filled), that the memfd
// does not outlive Allocate, how errors map, and that every narrower right
// is refused. (Real udmabuf.ko is tested in qemu:
// tests/kernel/stock_backends_test.cc.)
#include "service/backend/udmabuf_backend.h"

#include <fcntl.h>
#include <linux/udmabuf.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::HasSubstr;

struct Calls {
  std::vector<udmabuf_create> creates;
  std::vector<int> seals;      // F_GET_SEALS of each memfd when created
  std::vector<off_t> sizes;    // its size then
  std::vector<std::string> names;
  int fail_create = 0;  // errno to fail Create with
  uint64_t size_limit_mb = 64;  // past it Create fails EINVAL, as udmabuf's
};

// Checks what udmabuf checks and hands back a dup of the memfd as the
// stand-in dma-buf.
class FakeNode : public UdmabufNode {
 public:
  explicit FakeNode(Calls* calls) : calls_(calls) {}
  int Create(const udmabuf_create* create) override {
    calls_->creates.push_back(*create);
    const int memfd = static_cast<int>(create->memfd);
    calls_->seals.push_back(fcntl(memfd, F_GET_SEALS));
    struct stat st{};
    fstat(memfd, &st);
    calls_->sizes.push_back(st.st_size);
    if (calls_->fail_create != 0) return -calls_->fail_create;
    if (create->size > calls_->size_limit_mb << 20) return -EINVAL;
    const int fd = fcntl(memfd, F_DUPFD_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
  }
  int SetName(int, const char* name) override {
    calls_->names.emplace_back(name);
    return 0;
  }
  uint64_t SizeLimitMb() override { return calls_->size_limit_mb; }

 private:
  Calls* calls_;
};

std::unique_ptr<UdmabufBackend> Backend(Calls* calls) {
  return UdmabufBackend::CreateWithNode(std::make_unique<FakeNode>(calls));
}

TEST(UdmabufBackendTest, HandsTheKernelASealedSizedMemfdAcrossSizes) {
  Calls calls;
  auto b = Backend(&calls);
  for (uint64_t size : {uint64_t{4096}, uint64_t{16} * 4096, uint64_t{8} << 20}) {
    SCOPED_TRACE(size);
    absl::StatusOr<UniqueFd> fd = b->Allocate({size, "cam", 0, std::nullopt});
    ASSERT_TRUE(fd.ok()) << fd.status();
    const udmabuf_create& c = calls.creates.back();
    EXPECT_EQ(c.flags, static_cast<uint32_t>(UDMABUF_FLAGS_CLOEXEC));
    EXPECT_EQ(c.offset, 0u);
    EXPECT_EQ(c.size, size);
    EXPECT_EQ(calls.sizes.back(), static_cast<off_t>(size));
    // udmabuf needs SHRINK and refuses WRITE.
    // (And F_SEAL_EXEC, 0x20, where the kernel has it: memfd_backend_test.)
    EXPECT_EQ(calls.seals.back() & ~0x20, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd->get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    const auto* bytes = static_cast<const unsigned char*>(p);
    for (uint64_t i = 0; i < size; i += 997) ASSERT_EQ(bytes[i], 0) << i;
    munmap(p, size);
  }
  EXPECT_EQ(calls.names.front(), "halloc:cam");
}

TEST(UdmabufBackendTest, TheMemfdIsClosedOnceTheDmabufExists) {
  Calls calls;
  auto b = Backend(&calls);
  absl::StatusOr<UniqueFd> fd = b->Allocate({4096, "x", 0, std::nullopt});
  ASSERT_TRUE(fd.ok());
  const int memfd = static_cast<int>(calls.creates.back().memfd);
  EXPECT_NE(memfd, fd->get());
  errno = 0;
  EXPECT_EQ(fcntl(memfd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(UdmabufBackendTest, KernelErrorsMapToStatusCodesAndLeakNothing) {
  Calls calls;
  auto b = Backend(&calls);
  const int before = dup(0);
  close(before);
  calls.fail_create = ENOMEM;
  EXPECT_EQ(b->Allocate({4096, "x", 0, std::nullopt}).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Within the module's limit, EINVAL is hallocd's own doing (its memfd,
  // seals, size): INTERNAL, not INVALID_ARGUMENT for the caller to fix.
  calls.fail_create = EINVAL;
  absl::StatusOr<UniqueFd> fd = b->Allocate({4096, "x", 0, std::nullopt});
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("UDMABUF_CREATE"));
  calls.fail_create = EBADF;
  EXPECT_EQ(b->Allocate({4096, "x", 0, std::nullopt}).status().code(), absl::StatusCode::kInternal);
  const int after = dup(0);
  close(after);
  EXPECT_EQ(after, before);
  EXPECT_EQ(b->Allocate({0, "zero", 0, std::nullopt}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A buffer past udmabuf's size_limit_mb is hallocd's room running out
// (RESOURCE_EXHAUSTED, naming the limit), not the caller's error: the
// request is within what hallocd allows (it was INVALID_ARGUMENT).
TEST(UdmabufBackendTest, ABufferPastTheModulesSizeLimitIsResourceExhausted) {
  Calls calls;
  calls.size_limit_mb = 2;
  auto b = Backend(&calls);
  absl::StatusOr<UniqueFd> fd = b->Allocate({uint64_t{4} << 20, "big", 0, std::nullopt});
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kResourceExhausted) << fd.status();
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("2 MiB"));
  EXPECT_TRUE(b->Allocate({uint64_t{2} << 20, "at", 0, std::nullopt}).ok());
  // Unknown limit (no sysfs): most likely that limit, and hallocd's room
  // either way (it was INVALID_ARGUMENT).
  calls.size_limit_mb = 0;
  calls.fail_create = EINVAL;
  fd = b->Allocate({uint64_t{4} << 20, "big", 0, std::nullopt});
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kResourceExhausted) << fd.status();
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("size_limit_mb"));
}

TEST(UdmabufBackendTest, CreateNeedsTheNode) {
  absl::StatusOr<std::unique_ptr<UdmabufBackend>> b =
      UdmabufBackend::Create("/nonexistent/udmabuf");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("CONFIG_UDMABUF"));
}

TEST(UdmabufBackendTest, EnforcesReadWriteOnlyAndRefusesEveryNarrowing) {
  Calls calls;
  auto b = Backend(&calls);
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
  for (const ViewRights& rights :
       {ViewRights{CpuAccess::kRead, std::nullopt}, ViewRights{CpuAccess::kNone, std::nullopt},
        ViewRights{CpuAccess::kReadWrite, std::vector<std::string>{"vgem"}}}) {
    EXPECT_TRUE(b->NeedsView(rights));
    absl::StatusOr<UniqueFd> view = b->OpenView(*fd, rights);
    EXPECT_EQ(view.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(view.status().message()), HasSubstr("udmabuf backend cannot"));
  }
}

}  // namespace
}  // namespace halloc
