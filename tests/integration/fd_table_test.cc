// A real hallocd at a small fd limit: all clients' buffers together stop at
// what its fd table leaves them (BufferRoom), and hallocd still serves.
#include <stdlib.h>
#include <sys/resource.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "tests/integration/hallocd_process.h"

namespace halloc {
namespace {

using testing::HallocdProcess;

class FdTableTest : public ::testing::Test {
 protected:
  void TearDown() override { daemon_.reset(); }

  testing::TempDir dir_{"fdtable"};
  std::unique_ptr<HallocdProcess> daemon_;
};

TEST_F(FdTableTest, EveryonesBuffersStopAtTheRoomAndHallocdStillServes) {
  // The built-in policy at 512 fds: its connection limits (64 per socket,
  // two fds each, 16 more for root) and the pool's stock would take more
  // than the table, so buffers keep their least share, a quarter (128),
  // below the default per-uid quota (1024). Without the room, this one
  // uid would fill the table and hallocd would accept nobody.
  constexpr rlim_t kFds = 512;
  absl::StatusOr<std::unique_ptr<HallocdProcess>> d =
      HallocdProcess::Start(dir_.path(), {"", kFds, {"--backend=memfd-pool"}});
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = *std::move(d);
  absl::StatusOr<Client> c = Client::Connect(daemon_->connect_options());
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<Buffer> held;
  absl::Status refused;
  while (held.size() < kFds) {
    absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(4096));
    if (!b.ok()) {
      refused = b.status();
      break;
    }
    held.push_back(*std::move(b));
  }
  EXPECT_EQ(held.size(), kFds / 4) << refused;
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "--max_buffers")) << refused;

  // Full, it still takes a new client, answers it, and keeps fds spare.
  absl::StatusOr<Client> other = Client::Connect(daemon_->connect_options());
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::StatsResponse> s = other->Stats();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->live_buffers(), kFds / 4);
  EXPECT_EQ(s->max_buffers(), kFds / 4);
  EXPECT_EQ(other->Allocate(BlobDescriptor(4096)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_LT(daemon_->Fds(), static_cast<int>(kFds) - 64) << daemon_->Log();

  // One released (and closed here) makes room for one.
  const uint64_t id = held.back().id();
  held.pop_back();
  ASSERT_TRUE(c->Release(id).ok());
  absl::StatusOr<Buffer> again = other->Allocate(BlobDescriptor(4096));
  EXPECT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace halloc
