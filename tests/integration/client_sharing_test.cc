// End to end: Share, Import and Revoke through libhalloc on both of its
// paths (the broker fast path and gRPC) against an in-process hallocd: the
// same grants, fds, rights and errors, and no fd left behind.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/open_fds.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::absl::StatusCode;
using testing::CountOpenFds;
using Via = testing::TestDaemon::Via;

class ClientSharingTest : public testing::HallocTest {};

// Imports on both paths: the broker's (the reply and the fd in one
// record) and gRPC's (the fd ahead of the reply), with the same results
// and the same errors, and no fd left behind by a refused one.
TEST_F(ClientSharingTest, BothPathsAgreeOnImports) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(8192, 0, "both"));
  ASSERT_TRUE(b.ok()) << b.status();
  absl::StatusOr<v1::Grant> ro = client().Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
  ASSERT_TRUE(ro.ok()) << ro.status();
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    // On the broker path the peer has no control socket at all: whatever it
    // gets came on the broker socket.
    absl::StatusOr<Client> peer = daemon().Connect(fast ? Via::kBrokerOnly : Via::kGrpc);
    ASSERT_TRUE(peer.ok()) << peer.status();
    // gRPC's first call opens what its channel keeps open.
    if (!fast) ASSERT_TRUE(peer->Stats().ok());
    const int fds_before = CountOpenFds();
    absl::StatusOr<Buffer> got = peer->Import(ro->token());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->id(), b->id());
    EXPECT_EQ(got->size(), b->size());
    EXPECT_EQ(got->info().name(), "both");
    EXPECT_EQ(got->info().cpu_access(), v1::CPU_ACCESS_READ);
    EXPECT_FALSE(got->info().owned());
    EXPECT_EQ(fcntl(got->fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
    // Twice: a second fd for the same hold.
    absl::StatusOr<Buffer> again = peer->Import(ro->token());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->id(), b->id());
    EXPECT_NE(again->fd(), got->fd());
    for (const std::string& token : {std::string("no such grant"), std::string()}) {
      absl::StatusOr<Buffer> bad = peer->Import(token);
      EXPECT_EQ(bad.status().code(), StatusCode::kNotFound) << bad.status();
      EXPECT_TRUE(absl::StartsWith(bad.status().message(), "Import: ")) << bad.status();
    }
    // (The first loop's also opened the read-only view hallocd, in this
    // process, keeps with the buffer for every read-only holder.)
    EXPECT_EQ(CountOpenFds(), fds_before + 2 + (fast ? 1 : 0))
        << "the two imports' fds, nothing else";
    absl::StatusOr<v1::BufferInfo> d = client().Describe(b->id());
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->holders_size(), 2);
    EXPECT_TRUE(peer->Release(b->id()).ok());
  }
  // A revoked grant: refused alike.
  ASSERT_TRUE(client().Revoke(ro->id()).ok());
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    // On the broker path the peer has no control socket at all: whatever it
    // gets came on the broker socket.
    absl::StatusOr<Client> peer = daemon().Connect(fast ? Via::kBrokerOnly : Via::kGrpc);
    ASSERT_TRUE(peer.ok()) << peer.status();
    EXPECT_EQ(peer->Import(ro->token()).status().code(), StatusCode::kNotFound);
  }
}

// Share and Revoke on both paths: the same grants, the same errors (on the
// broker path the sharer has no control socket: its calls went on the
// broker).
TEST_F(ClientSharingTest, BothPathsAgreeOnSharesAndRevokes) {
  std::vector<StatusCode> codes[2];
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    absl::StatusOr<Client> sharer = daemon().Connect(fast ? Via::kBrokerOnly : Via::kGrpc);
    ASSERT_TRUE(sharer.ok()) << sharer.status();
    absl::StatusOr<Buffer> b = sharer->Allocate(BlobDescriptor(4096, 0, "given"));
    ASSERT_TRUE(b.ok()) << b.status();
    absl::StatusOr<v1::Grant> g = sharer->Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->buffer_id(), b->id());
    EXPECT_EQ(g->cpu_access(), v1::CPU_ACCESS_READ);
    EXPECT_EQ(g->token().size(), 32u);
    EXPECT_EQ(g->peer().uid(), getuid());
    absl::StatusOr<Buffer> got = client().Import(g->token());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->id(), b->id());
    for (absl::Status s :
         {sharer->Share(uint64_t{1} << 40, getuid()).status(),
          sharer->ShareWithClient(b->id(), "no-such-client").status(),
          sharer->Share(b->id(), getuid(), static_cast<v1::CpuAccess>(77)).status()}) {
      EXPECT_FALSE(s.ok());
      EXPECT_TRUE(absl::StartsWith(s.message(), "Share: ")) << s;
      codes[fast ? 0 : 1].push_back(s.code());
    }
    // Revoke: the grant goes (its token imports no more); once more, and a
    // grant this session never made (the other client's), are refused.
    absl::StatusOr<v1::Grant> others = client().Share(got->id(), getuid());
    ASSERT_TRUE(others.ok()) << others.status();
    ASSERT_TRUE(sharer->Revoke(g->id()).ok());
    EXPECT_EQ(client().Import(g->token()).status().code(), StatusCode::kNotFound);
    for (absl::Status s : {sharer->Revoke(g->id()), sharer->Revoke(others->id())}) {
      EXPECT_FALSE(s.ok());
      EXPECT_TRUE(absl::StartsWith(s.message(), "Revoke: ")) << s;
      codes[fast ? 0 : 1].push_back(s.code());
    }
  }
  EXPECT_EQ(codes[0], codes[1]);
  EXPECT_EQ(codes[0][0], StatusCode::kNotFound);
  EXPECT_EQ(codes[0][3], StatusCode::kNotFound);
}

// A token or a peer name longer than a broker record holds goes as a gRPC
// call and gets its answer (before: the broker's "malformed" reply, with
// no request id, left the call to its deadline): RESOURCE_EXHAUSTED, the
// request being past what hallocd reads on either path (64 KiB).
TEST_F(ClientSharingTest, TokensAndNamesLongerThanARecordAreAnsweredToo) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(4096, 0, "long"));
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string huge(70000, 'x');
  absl::StatusOr<Client> grpc_only = daemon().Connect(Via::kGrpc);
  ASSERT_TRUE(grpc_only.ok()) << grpc_only.status();
  EXPECT_EQ(client().Import(huge).status().code(), grpc_only->Import(huge).status().code());
  EXPECT_EQ(client().Import(huge).status().code(), StatusCode::kResourceExhausted);
  const absl::Status named = client().ShareWithClient(b->id(), huge).status();
  EXPECT_EQ(named.code(), StatusCode::kResourceExhausted) << named;
}

// Two imports of one buffer in flight at once on one Client, under grants
// of different rights: each gets the fd of its own import, not the other's
// (on gRPC their fds come ahead of the replies and carry the same buffer
// id: the call id tells them apart; on the broker, each comes with its
// reply).
TEST_F(ClientSharingTest, ConcurrentImportsOfOneBufferGetTheirOwnFds) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(4096, 0, "twice"));
  ASSERT_TRUE(b.ok());
  absl::StatusOr<v1::Grant> ro = client().Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> rw =
      client().Share(b->id(), getuid(), v1::CPU_ACCESS_READ_WRITE);
  ASSERT_TRUE(ro.ok() && rw.ok());
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    absl::StatusOr<Client> peer = daemon().Connect(fast ? Via::kBroker : Via::kGrpc);
    ASSERT_TRUE(peer.ok());
    std::atomic<int> wrong{0}, failed{0};
    auto importer = [&](const std::string& token, v1::CpuAccess access, int mode) {
      for (int i = 0; i < 150; ++i) {
        absl::StatusOr<Buffer> got = peer->Import(token);
        if (!got.ok()) {
          ++failed;
          continue;
        }
        if (got->info().cpu_access() != access || (fcntl(got->fd(), F_GETFL) & O_ACCMODE) != mode) {
          ++wrong;
        }
      }
    };
    std::thread a(importer, ro->token(), v1::CPU_ACCESS_READ, O_RDONLY);
    std::thread c(importer, rw->token(), v1::CPU_ACCESS_READ_WRITE, O_RDWR);
    a.join();
    c.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(failed.load(), 0);
  }
}

}  // namespace
}  // namespace halloc
