// hallocd's broker while a client backs a large halloc-deferred buffer: the
// broker makes views (Import) and revokes them for every client on one
// thread, and the module allocates a first use's pages without the lock
// those take (kernel/halloc_backing.c), so one client's backing holds up
// no one else's calls.
#include <errno.h>
#include <linux/dma-buf.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::halloc::BlobDescriptor;
using ::halloc::Client;

constexpr uint64_t kCpuReadOften = 0x3;
constexpr uint64_t kCpuWriteOften = 0x3 << 4;

class DaemonBackingTest : public HallocTest {
 protected:
  void TearDown() override { daemon_.reset(); }

  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
};

TEST_F(DaemonBackingTest, ImportAndRevokeOnTheBrokerDoNotWaitForABacking) {
  auto d = StartDaemon("halloc");  // default policy: share within the uid
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = *std::move(d);
  absl::StatusOr<Client> owner = daemon_->Connect();
  absl::StatusOr<Client> peer = daemon_->Connect();
  ASSERT_TRUE(owner.ok() && peer.ok()) << owner.status() << " " << peer.status();

  const long max_mb = ModuleParam("max_buffer_mb");
  ASSERT_GT(max_mb, 0);
  const uint64_t size = uint64_t(std::min(max_mb, 256L)) << 20;
  absl::StatusOr<halloc::Buffer> buf =
      owner->Allocate(BlobDescriptor(size, kCpuReadOften | kCpuWriteOften, "large"));
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_STREQ(InfoOf(buf->fd()).heap, HALLOC_HEAP_DEFERRED);
  absl::StatusOr<halloc::v1::Grant> grant =
      owner->Share(buf->id(), getuid(), halloc::v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();

  // The owner's first CPU bracket backs the buffer.
  const int fd = buf->fd();
  FirstUseThread first(fd);
  const bool seen = SawBacking(fd, first);
  EXPECT_TRUE(seen) << "the backing of " << size << " bytes ended before INFO saw it under way";

  if (seen) {
    // Another session's Import (a new view) and the owner's Revoke, both on
    // the broker, are answered while the backing runs.
    absl::StatusOr<halloc::Buffer> got = peer->Import(grant->token());
    ASSERT_TRUE(got.ok()) << got.status();
    const bool imported_during = Backing(fd) && !first.done();
    EXPECT_TRUE(imported_during) << "the Import waited for the owner's backing";
    EXPECT_TRUE(owner->Revoke(grant->id()).ok());
    const bool revoked_during = Backing(fd) && !first.done();
    EXPECT_TRUE(revoked_during) << "the Revoke waited for the owner's backing";
    EXPECT_NE(InfoOf(got->fd()).flags & HALLOC_INFO_REVOKED, 0u);
  }
  const int first_result = first.Join();
  EXPECT_EQ(first_result, 0) << strerror(-first_result);
  RecordProperty("backing_ms", std::to_string(first.took_ms()));
  EXPECT_EQ(Sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW), 0);
  EXPECT_EQ(InfoOf(fd).flags & (HALLOC_INFO_NOT_BACKED | HALLOC_INFO_BACKING), 0u);
}

}  // namespace
}  // namespace halloc_test
