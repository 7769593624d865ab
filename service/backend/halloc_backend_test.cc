// The halloc backend against fake module nodes: which heap a request goes
// to, what a view asks the kernel for, how errors map, what Create needs.
// (The real module is tested in qemu: tests/kernel/.)
#include "service/backend/halloc_backend.h"

#include <fcntl.h>
#include <linux/dma-heap.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "kernel/uapi/halloc_heap.h"

namespace halloc {
namespace {

struct Calls {
  std::vector<HallocHeap> allocs;
  std::vector<halloc_view_data> views;
  std::vector<std::string> names;
  int fail_alloc = 0;  // errno to fail Alloc with
  int fail_view = 0;
  bool has_protected = true;
  bool has_revoke = true;
  uint64_t next_view_id = 100;
  std::vector<halloc_revoke_data> revokes;
  int fail_revoke = 0;
  bool has_deferred = false;
  int last_file = 1;     // IsLastFile's answer
  uint32_t dmabufs = 1;  // Info's
  uint32_t file_refs = 0;  // Info's; 0 with path_refs 0: an older module
  uint32_t path_refs = 0;
  int fail_info = 0;
  std::vector<int> infos;  // the fds Info was asked about
};

class FakeNodes : public HallocNodes {
 public:
  explicit FakeNodes(Calls* calls) : calls_(calls) {}
  int Alloc(HallocHeap heap, dma_heap_allocation_data* data) override {
    calls_->allocs.push_back(heap);
    if (calls_->fail_alloc != 0) return calls_->fail_alloc;
    const int fd = memfd_create("fake-dmabuf", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(data->len)) != 0) return errno;
    data->fd = static_cast<uint32_t>(fd);
    return 0;
  }
  bool HasProtected() const override { return calls_->has_protected; }
  bool HasDeferred() const override { return calls_->has_deferred; }
  int View(halloc_view_data* view) override {
    calls_->views.push_back(*view);
    if (calls_->fail_view != 0) return calls_->fail_view;
    view->fd = static_cast<uint32_t>(fcntl(static_cast<int>(view->source_fd), F_DUPFD_CLOEXEC, 0));
    view->view_id = calls_->next_view_id++;
    return 0;
  }
  bool HasRevoke() const override { return calls_->has_revoke; }
  int Revoke(halloc_revoke_data* revoke) override {
    calls_->revokes.push_back(*revoke);
    return calls_->fail_revoke;
  }
  int SetName(int, const char* name) override {
    calls_->names.emplace_back(name);
    return 0;
  }
  int Info(halloc_buffer_info* info) override {
    calls_->infos.push_back(info->fd);
    info->dmabufs = calls_->dmabufs;
    info->file_refs = calls_->file_refs;
    info->path_refs = calls_->path_refs;
    return calls_->fail_info;
  }
  int IsLastFile(int) override { return calls_->last_file; }

 private:
  Calls* calls_;
};

std::unique_ptr<HallocBackend> Backend(Calls* calls) {
  return HallocBackend::CreateWithNodes(std::make_unique<FakeNodes>(calls), {"vivid", "imx-isi"});
}

TEST(HallocBackendTest, DevicesThatNeedContiguousMemoryGetTheContigHeap) {
  Calls calls;
  auto b = Backend(&calls);
  ASSERT_TRUE(b->Allocate({4096, "a", 0, std::nullopt}).ok());                   // any device
  ASSERT_TRUE(b->Allocate({4096, "b", 0, std::vector<std::string>{"vgem"}}).ok());
  ASSERT_TRUE(b->Allocate({4096, "c", 0, std::vector<std::string>{"vgem", "vivid"}}).ok());
  EXPECT_EQ(calls.allocs, (std::vector<HallocHeap>{HallocHeap::kSystem, HallocHeap::kSystem,
                                                    HallocHeap::kContig}));
  EXPECT_EQ(calls.names, (std::vector<std::string>{"halloc:a", "halloc:b", "halloc:c"}));
}

// With halloc-deferred the kernel picks the pages from the devices that
// attach: every request but PROTECTED goes there, whatever the policy says
// about the devices.
TEST(HallocBackendTest, EverythingButProtectedGoesToTheDeferredHeapWhenPresent) {
  Calls calls;
  calls.has_deferred = true;
  auto b = Backend(&calls);
  ASSERT_TRUE(b->Allocate({4096, "a", 0, std::nullopt}).ok());
  ASSERT_TRUE(b->Allocate({4096, "b", 0, std::vector<std::string>{"vgem"}}).ok());
  ASSERT_TRUE(b->Allocate({4096, "c", 0, std::vector<std::string>{"vivid"}}).ok());
  ASSERT_TRUE(b->Allocate({4096, "p", usage::kProtected, std::nullopt}).ok());
  EXPECT_EQ(calls.allocs, (std::vector<HallocHeap>{HallocHeap::kDeferred, HallocHeap::kDeferred,
                                                    HallocHeap::kDeferred,
                                                    HallocHeap::kProtected}));
  // PROTECTED keeps the guess: halloc-protected is never contiguous.
  EXPECT_EQ(b->Allocate({4096, "p", usage::kProtected, std::vector<std::string>{"vivid"}})
                .status().code(),
            absl::StatusCode::kFailedPrecondition);
  calls.fail_alloc = ENOMEM;
  absl::Status s = b->Allocate({1 << 20, "big", 0, std::vector<std::string>{"vivid"}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("halloc-deferred"), absl::string_view::npos) << s;
}

TEST(HallocBackendTest, ProtectedUsageGetsTheProtectedHeapWhenTheModuleHasIt) {
  Calls calls;
  auto b = Backend(&calls);
  EXPECT_TRUE(b->CanProtect());
  ASSERT_TRUE(b->Allocate({4096, "p", usage::kProtected, std::nullopt}).ok());
  ASSERT_TRUE(b->Allocate({4096, "p", usage::kProtected | usage::kGpuTexture,
                           std::vector<std::string>{"vgem"}}).ok());
  EXPECT_EQ(calls.allocs, (std::vector<HallocHeap>{HallocHeap::kProtected,
                                                    HallocHeap::kProtected}));
  // Protected and contiguous cannot both be had: said before the kernel.
  EXPECT_EQ(b->Allocate({4096, "p", usage::kProtected, std::vector<std::string>{"vivid"}})
                .status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(calls.allocs.size(), 2u);
  calls.has_protected = false;
  EXPECT_FALSE(b->CanProtect());
}

TEST(HallocBackendTest, AViewCarriesTheRightsAndTheAllowList) {
  Calls calls;
  auto b = Backend(&calls);
  absl::StatusOr<UniqueFd> buf = b->Allocate({4096, "a", 0, std::nullopt});
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(b->OpenView(*buf, {CpuAccess::kRead, std::vector<std::string>{"vgem", "vivid"}}).ok());
  ASSERT_TRUE(b->OpenView(*buf, {CpuAccess::kNone, std::nullopt}).ok());
  ASSERT_EQ(calls.views.size(), 2u);
  const halloc_view_data& v = calls.views[0];
  EXPECT_EQ(static_cast<int>(v.source_fd), buf->get());
  EXPECT_EQ(v.cpu_access, HALLOC_CPU_READ);
  EXPECT_TRUE(v.flags & HALLOC_VIEW_RESTRICT_ATTACH);
  ASSERT_EQ(v.num_drivers, 2u);
  EXPECT_STREQ(v.drivers[0], "vgem");
  EXPECT_STREQ(v.drivers[1], "vivid");
  EXPECT_EQ(calls.views[1].cpu_access, HALLOC_CPU_NONE);
  EXPECT_FALSE(calls.views[1].flags & HALLOC_VIEW_RESTRICT_ATTACH);
  // Only narrower rights need a view.
  EXPECT_FALSE(b->NeedsView({CpuAccess::kReadWrite, std::nullopt}));
  EXPECT_TRUE(b->NeedsView({CpuAccess::kReadWrite, std::vector<std::string>{"vgem"}}));
}

// The drivers come from the policy (attach_devices), not the caller:
// FAILED_PRECONDITION, not INVALID_ARGUMENT.
TEST(HallocBackendTest, BadViewsAreRefusedBeforeTheKernel) {
  Calls calls;
  auto b = Backend(&calls);
  absl::StatusOr<UniqueFd> buf = b->Allocate({4096, "a", 0, std::nullopt});
  ASSERT_TRUE(buf.ok());
  std::vector<std::string> many(HALLOC_MAX_DRIVERS + 1, "vgem");
  EXPECT_EQ(b->OpenView(*buf, {CpuAccess::kRead, many}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b->OpenView(*buf, {CpuAccess::kRead, std::vector<std::string>{""}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b->OpenView(*buf, {CpuAccess::kRead,
                               std::vector<std::string>{std::string(HALLOC_NAME_LEN, 'x')}})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(calls.views.empty());
}

TEST(HallocBackendTest, KernelErrorsMapToTheirCodes) {
  Calls calls;
  auto b = Backend(&calls);
  calls.fail_alloc = ENOMEM;
  absl::Status s = b->Allocate({1 << 20, "big", 0, std::vector<std::string>{"vivid"}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("halloc-contig"), absl::string_view::npos) << s;
  calls.fail_alloc = 0;
  absl::StatusOr<UniqueFd> buf = b->Allocate({4096, "a", 0, std::nullopt});
  ASSERT_TRUE(buf.ok());
  // A view is opened from hallocd's own full-rights fd: a refusal (EPERM:
  // one that would widen) is hallocd's doing, not the caller's.
  calls.fail_view = EPERM;
  EXPECT_EQ(b->OpenView(*buf, {CpuAccess::kRead, std::nullopt}).status().code(),
            absl::StatusCode::kInternal);
  calls.fail_view = ENOMEM;
  EXPECT_EQ(b->OpenView(*buf, {CpuAccess::kRead, std::nullopt}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b->Allocate({0, "zero", 0, std::nullopt}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HallocBackendTest, CreateNeedsTheModulesNodes) {
  const std::string dir = ::testing::TempDir() + "/halloc-nodes";
  std::filesystem::create_directories(dir);
  HallocBackendPaths paths;
  paths.heap = dir + "/system";
  paths.contig_heap = dir + "/contig";
  paths.protected_heap = dir + "/protected";
  paths.deferred_heap = dir + "/deferred";
  paths.control = dir + "/control";
  paths.contig_only_drivers = dir + "/param";
  absl::StatusOr<std::unique_ptr<HallocBackend>> b = HallocBackend::Create(paths);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("is halloc_heap.ko loaded?"), absl::string_view::npos);
  for (const char* f : {"/system", "/contig", "/control"}) std::ofstream(dir + f) << "";
  std::ofstream(dir + "/param") << " vivid , imx-isi\n";
  b = HallocBackend::Create(paths);
  ASSERT_TRUE(b.ok()) << b.status();
  // Regular files take no ioctls: the kernel's ENOTTY, hallocd's own
  // setup going wrong (INTERNAL), nothing for the caller to fix.
  absl::Status s = (*b)->Allocate({4096, "a", 0, std::nullopt}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("halloc-system"), absl::string_view::npos) << s;
  // The optional deferred node, once there, takes the requests.
  std::ofstream(dir + "/deferred") << "";
  b = HallocBackend::Create(paths);
  ASSERT_TRUE(b.ok()) << b.status();
  s = (*b)->Allocate({4096, "a", 0, std::nullopt}).status();
  EXPECT_NE(s.message().find("halloc-deferred"), absl::string_view::npos) << s;
  std::filesystem::remove_all(dir);
}

// Each required node missing in turn (the rest present: /dev/null), by
// field: the braced list filled contig_heap, not control, so a missing
// /dev/halloc was never tried.
TEST(HallocBackendTest, MissingNodesAreFailedPrecondition) {
  HallocBackendPaths present;
  present.heap = present.contig_heap = present.control = "/dev/null";
  present.protected_heap = present.deferred_heap = "/nonexistent/optional";
  present.contig_only_drivers = "/nonexistent/param";
  HallocBackendPaths paths = present;
  paths.heap = "/nonexistent/heap";
  EXPECT_EQ(HallocBackend::Create(paths).status().code(), absl::StatusCode::kFailedPrecondition);
  paths = present;
  paths.control = "/nonexistent/halloc";
  absl::Status s = HallocBackend::Create(paths).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("/nonexistent/halloc"), absl::string_view::npos) << s;
}

// A node that is there but closed to hallocd (its mode, DeviceAllow=) is
// told apart from one the machine lacks: --backend=auto may stop on the
// first (in-guest: ProbeOrderTest.ClosedNodesStopAutoWhenNotSkipped).
TEST(HallocBackendTest, ClosedNodesArePermissionDeniedMissingOnesFailedPrecondition) {
  for (int err : {EACCES, EPERM}) {
    const absl::Status s = NodeOpenError("halloc", "/dev/halloc", err, "is it loaded?");
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_NE(s.message().find("/dev/halloc"), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("closed to hallocd"), absl::string_view::npos) << s;
  }
  for (int err : {ENOENT, ENODEV, ENXIO}) {
    const absl::Status s = NodeOpenError("halloc", "/dev/halloc", err, "is it loaded?");
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("is it loaded?"), absl::string_view::npos) << s;
  }
}

TEST(HallocBackendTest, RevocableViewsCarryTheKernelIdAndRevokeWithTheBuffer) {
  Calls calls;
  auto b = Backend(&calls);
  EXPECT_TRUE(b->CanRevokeLive());
  absl::StatusOr<UniqueFd> buffer = b->Allocate({4096, "a", 0, std::nullopt});
  ASSERT_TRUE(buffer.ok());
  ViewRights rights;
  rights.cpu = CpuAccess::kRead;
  absl::StatusOr<Backend::RevocableView> view = b->OpenRevocableView(*buffer, rights);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(view->fd.is_valid());
  EXPECT_EQ(view->id, 100u);
  ASSERT_TRUE(b->RevokeView(*buffer, view->id).ok());
  ASSERT_EQ(calls.revokes.size(), 1u);
  EXPECT_EQ(calls.revokes[0].fd, buffer->get()) << "the original's authority";
  EXPECT_EQ(calls.revokes[0].view_id, 100u);
  EXPECT_EQ(calls.revokes[0].flags, 0u);
  // The kernel's answers map to status codes.
  calls.fail_revoke = ENOENT;
  EXPECT_EQ(b->RevokeView(*buffer, 7).code(), absl::StatusCode::kNotFound);
  calls.fail_revoke = EPERM;  // hallocd's own fd: not the caller's doing
  EXPECT_EQ(b->RevokeView(*buffer, 7).code(), absl::StatusCode::kInternal);
}

TEST(HallocBackendTest, AModuleWithoutRevokeCannotRevokeLive) {
  Calls calls;
  calls.has_revoke = false;
  EXPECT_FALSE(Backend(&calls)->CanRevokeLive());
}

TEST(HallocBackendTest, TheLastReferenceIsTheOnlyFileAndPathWithNoViewAlive) {
  Calls calls;
  auto b = Backend(&calls);
  EXPECT_EQ(b->last_reference(), halloc::Backend::LastReference::kPolled);
  calls.file_refs = 1;
  calls.path_refs = 1;
  calls.last_file = 0;  // fdinfo is not asked: the module counts
  EXPECT_EQ(b->IsLastReference(7), 1);
  EXPECT_EQ(calls.infos, std::vector<int>{7});
  calls.path_refs = 2;  // an O_PATH open through /proc: fdinfo cannot see it
  EXPECT_EQ(b->IsLastReference(7), 0);
  calls.path_refs = 1;
  calls.file_refs = 2;  // another fd, a mapping or an importer
  EXPECT_EQ(b->IsLastReference(7), 0);
  calls.file_refs = 1;
  calls.dmabufs = 2;  // a view: its own file, over the same pages
  EXPECT_EQ(b->IsLastReference(7), 0);
  calls.dmabufs = 1;
  calls.fail_info = ENOTTY;
  EXPECT_EQ(b->IsLastReference(7), -ENOTTY);
}

TEST(HallocBackendTest, AnOlderModuleIsAskedThroughFdinfo) {
  Calls calls;  // file_refs and path_refs 0: a module before them
  auto b = Backend(&calls);
  calls.last_file = 1;
  EXPECT_EQ(b->IsLastReference(7), 1);
  calls.last_file = 0;
  EXPECT_EQ(b->IsLastReference(7), 0);
  calls.last_file = -ENODATA;
  EXPECT_EQ(b->IsLastReference(7), -ENODATA);
  calls.last_file = 1;
  calls.dmabufs = 2;
  EXPECT_EQ(b->IsLastReference(7), 0);
}

}  // namespace
}  // namespace halloc
