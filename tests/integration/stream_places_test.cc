// hallocd's places for long-lived gRPC streams, on an in-process daemon
// over its sockets, where each call's uid is the kernel's word
// (ControlPeers): ReleaseMany streams its client stalls and ends itself
// just before the cut use up the uid's budget of place time (its bound in
// all within six times that: StreamSlots::PlaceBudget), and then it gets
// none. Before, ending each stream just short of the bound and opening
// another kept the places for ever.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

TEST(StreamPlacesTest, ReleaseManyStreamsEndedJustBeforeTheirCutUseUpTheUidsBudget) {
  DaemonOptions options = testing::TestDaemon::DefaultOptions();
  options.grpc_streams.release_many = absl::Seconds(3);
  absl::StatusOr<std::unique_ptr<testing::TestDaemon>> daemon = testing::TestDaemon::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const ConnectOptions where = (*daemon)->connect_options();
  absl::StatusOr<BrokerConnection> session = ConnectBroker(where.broker_socket, absl::Seconds(5));
  ASSERT_TRUE(session.ok()) << session.status();
  auto stub = v1::Allocator::NewStub(
      grpc::CreateChannel("unix:" + where.control_socket, grpc::InsecureChannelCredentials()));
  // A stream of one part (not the last) that its client ends itself after
  // `stall`: hallocd answers CANCELLED, nothing released.
  auto ended_after = [&](absl::Duration stall) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, session->welcome.session_token());
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ReleaseResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::ReleaseRequest>> writer = stub->ReleaseMany(&ctx, &resp);
    v1::ReleaseRequest part;
    part.add_buffer_ids(1);
    writer->Write(part);
    absl::SleepFor(stall);
    writer->WritesDone();
    return writer->Finish();
  };
  for (int i = 0; i < 3; ++i) {
    const grpc::Status s = ended_after(absl::ZeroDuration());
    EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << i << ": " << s.error_message();
  }
  // Two streams of 2.2 s each, short of the 3 s cut: 4.4 s held.
  for (int i = 0; i < 2; ++i) {
    const grpc::Status s = ended_after(absl::Milliseconds(2200));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << i << ": " << s.error_message();
  }
  const grpc::Status s = ended_after(absl::ZeroDuration());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "held their places for 3s or more within 18s"))
      << s.error_message();
}

}  // namespace
}  // namespace halloc
