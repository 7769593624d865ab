// The example at the top of client.h, compiled and run as written.
#include <cstring>

#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace {

// --- as in client.h (Connect() finds the daemon through the environment) ---
absl::Status Fill() {
  ASSIGN_OR_RETURN(halloc::Client client, halloc::Client::Connect());
  ASSIGN_OR_RETURN(halloc::Buffer buf,
                   client.Allocate(halloc::BlobDescriptor(1 << 20)));
  ASSIGN_OR_RETURN(halloc::Mapping map, buf.Map(halloc::Access::kReadWrite));
  memset(map.data(), 0xff, map.size());
  return client.Release(buf.id());
}
// ---------------------------------------------------------------------------

TEST(ExampleTest, TheHeadersExampleWorks) {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d =
      halloc::testing::TestDaemon::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  const halloc::ConnectOptions o = (*d)->connect_options();
  setenv("HALLOC_CONTROL_SOCKET", o.control_socket.c_str(), 1);
  setenv("HALLOC_BROKER_SOCKET", o.broker_socket.c_str(), 1);
  EXPECT_TRUE(Fill().ok()) << Fill();
}

// A Mapping owns what it uses: it may outlive its Buffer.
TEST(ExampleTest, AMappingMayOutliveItsBuffer) {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d =
      halloc::testing::TestDaemon::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<halloc::Client> c = (*d)->Connect();
  ASSERT_TRUE(c.ok());
  std::optional<halloc::Mapping> map;
  {
    absl::StatusOr<halloc::Buffer> b = c->Allocate(halloc::BlobDescriptor(4096));
    ASSERT_TRUE(b.ok());
    absl::StatusOr<halloc::Mapping> m = b->Map(halloc::Access::kReadWrite);
    ASSERT_TRUE(m.ok());
    map.emplace(*std::move(m));
  }  // the Buffer (and its fd) is gone
  map->as<char>()[0] = 1;
  map.reset();
}

}  // namespace
