// libhalloc's gRPC calls against a control socket whose backlog other
// processes keep full: any local user can (connecting and closing in a
// loop faster than hallocd accepts), and gRPC's connect is non-blocking,
// so it fails at once. A call waits for room, up to its deadline.
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>

#include <memory>

#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/held_listener_testing.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

using testing::FakeBroker;
using testing::HeldListener;

// The one call the test makes: Stats, 7 live buffers.
class SevenLive final : public v1::Allocator::Service {
 public:
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*,
                     v1::StatsResponse* resp) override {
    resp->set_live_buffers(7);
    return grpc::Status::OK;
  }
};

// Before, Stats failed UNAVAILABLE within milliseconds of the first
// connect's EAGAIN, and the channel then waited out gRPC's backoff.
TEST(ClientControlTest, AGrpcCallWaitsForRoomInAFullBacklog) {
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  SevenLive service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  {
    HeldListener control(broker.control_socket(), SOCK_STREAM, [&server](UniqueFd c) {
      grpc::AddInsecureChannelFromFd(server.get(), c.release());
    });
    ASSERT_TRUE(control.Fill()) << "the backlog did not fill: the test shows nothing";
    absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(10)));
    ASSERT_TRUE(c.ok()) << c.status();
    control.Open(absl::Milliseconds(500));
    const absl::Time start = absl::Now();
    absl::StatusOr<v1::StatsResponse> stats = c->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status() << " after " << absl::Now() - start;
    EXPECT_EQ(stats->live_buffers(), 7u);
  }
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
}

// A call waits for its channel up to its deadline; but not in a session
// hallocd ended (its broker connection closed: hallocd exited or cut it):
// where nothing listens, UNAVAILABLE at once, as before calls waited.
TEST(ClientControlTest, AGrpcCallOfASessionHallocdEndedFailsAtOnce) {
  auto broker = std::make_unique<FakeBroker>([](int, const v1::BrokerRequest&) {});
  absl::StatusOr<Client> c = Client::Connect(broker->options(absl::Seconds(30)));
  ASSERT_TRUE(c.ok()) << c.status();
  broker.reset();  // its end of the session's socket closed; no control socket
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable) << stats.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waited for the deadline";
}

// ... and a call that needs no session (Stats: `hallocctl watch` across a
// restart) still reaches a hallocd that listens.
TEST(ClientControlTest, ASessionlessCallOfAnEndedSessionIsStillAnswered) {
  FakeBroker broker([](int sock, const v1::BrokerRequest&) { ::shutdown(sock, SHUT_RDWR); });
  SevenLive service;
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(10)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->Release(1).ok()) << "the fake cuts the session at its first request";
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->live_buffers(), 7u);
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
}

// A gRPC Allocate whose reply came but whose fd never does (a daemon that
// posed as hallocd, or lost it) fails within the call's timeout: the wait
// for the fd began a whole new timeout after the reply (here 2 s + 3 s).
TEST(ClientControlTest, AGrpcAllocateWaitsForItsFdWithinItsTimeout) {
  class NoFd final : public v1::Allocator::Service {
   public:
    grpc::Status Allocate(grpc::ServerContext*, const v1::AllocateRequest*,
                          v1::AllocateResponse* resp) override {
      absl::SleepFor(absl::Seconds(2));  // most of the call's timeout
      v1::BufferInfo* b = resp->add_buffers();
      b->set_id(42);
      b->set_size(4096);
      return grpc::Status::OK;  // and no fd on the broker socket
    }
  } service;
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  ConnectOptions options = broker.options(absl::Seconds(3));
  options.broker_fast_path = false;
  absl::StatusOr<Client> c = Client::Connect(options);
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Time start = absl::Now();
  const absl::Status allocate = c->Allocate(BlobDescriptor(4096)).status();
  EXPECT_EQ(allocate.code(), absl::StatusCode::kDeadlineExceeded) << allocate;
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(4500)) << "waited past the call's timeout";
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
}

}  // namespace
}  // namespace halloc
