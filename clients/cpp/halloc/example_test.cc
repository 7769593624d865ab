// The examples at the top of client.h and in README.md, compiled and run as
// written.
#include <drm_fourcc.h>
#include <unistd.h>

#include <cstring>

#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/usage.h"
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

// --- as in README.md ("From C++"): `peer_client` is another process's ------
absl::Status Frame(halloc::Client& peer_client, uid_t peer_uid) {
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect();
  const uint64_t usage = halloc::usage::kCpuWriteOften | halloc::usage::kGpuTexture;
  absl::StatusOr<halloc::Buffer> buf =
      client->Allocate(halloc::ImageDescriptor(1920, 1080, DRM_FORMAT_NV12, usage, "frame"));
  absl::StatusOr<halloc::Mapping> map = buf->Map(halloc::Access::kReadWrite);
  // the luma plane's rows, only if every byte of them is mapped (the layout is checked, not
  // trusted)
  const halloc::v1::PlaneLayout& luma = buf->layout().planes(0);
  absl::StatusOr<uint8_t*> rows = map->Rows(luma.offset(), luma.stride(), 1920, 1080);
  absl::Status ended = map->EndAccess();    // this frame's CPU work done: devices see its writes
  absl::Status begun = map->BeginAccess();  // the next frame's, on the same mapping
  absl::Status done = map->Unmap();  // the end of CPU access and its error (e.g. revoked)
  absl::StatusOr<halloc::v1::Grant> grant =
      client->Share(buf->id(), peer_uid, halloc::v1::CPU_ACCESS_READ);
  // in the peer's process:
  absl::StatusOr<halloc::Buffer> got = peer_client.Import(grant->token());
  // explicit sync on dma-bufs (Linux 6.0+): what a reader must wait for
  absl::StatusOr<halloc::UniqueFd> fence = got->ExportSyncFile(halloc::Access::kRead);
  // -------------------------------------------------------------------------
  for (const absl::Status& s : {rows.status(), ended, begun, done, got.status()}) {
    RETURN_IF_ERROR(s);
  }
  // A memfd has no fences to export: refused, not faked.
  return fence.ok() ? absl::InternalError("a memfd exported a sync file") : absl::OkStatus();
}

// A daemon that Connect() finds through the environment, as the examples'
// own does.
absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> FoundByTheEnvironment() {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d =
      halloc::testing::TestDaemon::Start();
  if (!d.ok()) return d;
  const halloc::ConnectOptions o = (*d)->connect_options();
  setenv("HALLOC_CONTROL_SOCKET", o.control_socket.c_str(), 1);
  setenv("HALLOC_BROKER_SOCKET", o.broker_socket.c_str(), 1);
  return d;
}

TEST(ExampleTest, TheHeadersExampleWorks) {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d = FoundByTheEnvironment();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(Fill().ok()) << Fill();
}

TEST(ExampleTest, TheReadmesExampleWorks) {
  absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> d = FoundByTheEnvironment();
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<halloc::Client> peer = (*d)->Connect();
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(Frame(*peer, ::getuid()).ok()) << Frame(*peer, ::getuid());
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
