// hallocd end to end on the stock-kernel backends: started with
// --backend=dmaheap (--dma_heap=halloc-system, the module's heap through the
// upstream UAPI alone) or --backend=udmabuf, it serves Allocate to a
// libhalloc client with real dma-bufs, and refuses a rule it cannot enforce
// with FAILED_PRECONDITION, as on memfd.
#include <errno.h>
#include <fcntl.h>

#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::halloc::BlobDescriptor;
using ::halloc::Client;
using ::halloc::testing::TestDaemon;

constexpr uint64_t kSize = 1 << 20;
constexpr uint64_t kCpuReadOften = 0x3;
constexpr uint64_t kCpuWriteOften = 0x3 << 4;

struct Stock {
  const char* backend;
  const char* dma_heap;  // --dma_heap (dmaheap only)
  const char* node;      // what it needs
  const char* env;       // set when tools/kernel-test.sh loaded that node's module
};

constexpr Stock kDmaHeap = {"dmaheap", HALLOC_HEAP_SYSTEM, HALLOC_HEAP_SYSTEM_PATH, "HALLOC_KO"};
constexpr Stock kUdmabuf = {"udmabuf", "", "/dev/udmabuf", "UDMABUF_KO"};

std::string StockName(const ::testing::TestParamInfo<Stock>& info) { return info.param.backend; }
void PrintTo(const Stock& s, std::ostream* os) { *os << s.backend; }

// One rule for uid 0 on the backend's heap, CPU rights up to `cpu`, devices
// per `attach` (an attach_devices line).
std::string RootPolicy(const std::string& heap, const std::string& cpu,
                       const std::string& attach) {
  return absl::StrCat(R"(
    clients {
      name: "root"
      match { uids: 0 }
      usages: "cpu_read_often" usages: "cpu_write_often" usages: "gpu_texture"
      heaps: ")", heap, R"("
      max_cpu_access: )", cpu, "\n", attach, R"(
      share_to: "@same_uid"
      receive_from: "@same_uid"
    })");
}

class StockDaemonTest : public ::testing::TestWithParam<Stock> {
 protected:
  void SetUp() override {
    if (access(GetParam().node, F_OK) != 0) {
      const std::string why = absl::StrCat("no ", GetParam().node, ": ", strerror(errno));
      if (!Env(GetParam().env).empty()) FAIL() << why;
      GTEST_SKIP() << why << " (module not loaded)";
    }
  }
  void TearDown() override { daemon_.reset(); }

  void StartDaemon(const std::string& policy) {
    absl::StatusOr<std::unique_ptr<TestDaemon>> d =
        halloc_test::StartDaemon(GetParam().backend, policy, GetParam().dma_heap);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }

  std::unique_ptr<TestDaemon> daemon_;
};

TEST_P(StockDaemonTest, ServesAllocateWithRealDmaBufs) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(""));
  absl::StatusOr<Client> client = daemon_->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<halloc::Buffer> buf =
      client->Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "frame"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(buf->info().backend(), GetParam().backend);
  EXPECT_TRUE(buf->is_dmabuf());
  EXPECT_EQ(buf->info().fd_kind(), halloc::v1::FD_KIND_DMA_BUF);
  absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(AllBytesAre(map->as<uint8_t>(), kSize, 0));
  std::memset(map->data(), 0x5a, kSize);
  if (GetParam().backend == std::string("dmaheap")) {
    // The module's own accounting sees its heap's buffer (named by hallocd).
    UniqueFd ctl(open(HALLOC_CONTROL_PATH, O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(ctl.valid()) << strerror(errno);
    halloc_buffer_info info;
    ASSERT_EQ(Info(ctl.get(), buf->fd(), &info), 0);
    EXPECT_STREQ(info.heap, HALLOC_HEAP_SYSTEM);
    EXPECT_STREQ(info.name, "halloc:frame");
  }
  UniqueFd vgem = OpenVgem();
  if (!vgem.valid()) GTEST_SKIP() << "no vgem DRM device for the import half";
  const int64_t handle = Import(vgem.get(), buf->fd());
  ASSERT_GT(handle, 0) << strerror(static_cast<int>(-handle));
  GemHandle gem(vgem.get(), static_cast<uint32_t>(handle));
}

TEST_P(StockDaemonTest, RulesItCannotEnforceAreFailedPrecondition) {
  struct Case {
    const char* cpu;
    const char* attach;
    const char* why;
  };
  // Read-only for the owner (a plain dma-buf fd is always read-write); a
  // device allow-list (every device may attach a plain dma-buf); and a rule
  // with no attach_devices at all, which allows no device.
  for (const Case& c : {Case{"CPU_ACCESS_READ", "attach_devices: \"*\"", "cannot enforce CPU"},
                        Case{"CPU_ACCESS_READ_WRITE", "attach_devices: \"vgem\"", "cannot limit"},
                        Case{"CPU_ACCESS_READ_WRITE", "", "cannot limit"}}) {
    SCOPED_TRACE(absl::StrCat(c.cpu, " ", c.attach));
    ASSERT_NO_FATAL_FAILURE(StartDaemon(RootPolicy(GetParam().backend, c.cpu, c.attach)));
    absl::StatusOr<Client> client = daemon_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<halloc::Buffer> buf =
        client->Allocate(BlobDescriptor(kSize, kCpuReadOften, "narrow"));
    EXPECT_EQ(buf.status().code(), absl::StatusCode::kFailedPrecondition) << buf.status();
    EXPECT_NE(std::string(buf.status().message()).find(c.why), std::string::npos)
        << buf.status();
    daemon_.reset();
  }
  // The same rule with read-write and any device is served.
  ASSERT_NO_FATAL_FAILURE(StartDaemon(
      RootPolicy(GetParam().backend, "CPU_ACCESS_READ_WRITE", "attach_devices: \"*\"")));
  absl::StatusOr<Client> client = daemon_->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<halloc::Buffer> buf =
      client->Allocate(BlobDescriptor(kSize, kCpuReadOften | kCpuWriteOften, "rw"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(buf->info().backend(), GetParam().backend);
  // A usage that only reads, under that rule: the read-only fd it would
  // narrow to is only a safeguard, which a plain dma-buf cannot give; the
  // owner gets what the rule allows, and is told so.
  buf = client->Allocate(BlobDescriptor(kSize, kCpuReadOften, "reads"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(buf->info().cpu_access(), halloc::v1::CPU_ACCESS_READ_WRITE);
}

INSTANTIATE_TEST_SUITE_P(Backends, StockDaemonTest, ::testing::Values(kDmaHeap, kUdmabuf),
                         StockName);

}  // namespace
}  // namespace halloc_test
