// libhalloc's gRPC Allocate (ConnectOptions::broker_fast_path off) against
// a scripted fake daemon (fake_broker.h): a call whose caller gave up must
// leave neither its fds open nor its buffers held.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace {

using testing::FakeBroker;
using testing::Memfd;
using testing::OpenOn;
using testing::ReleaseReply;

// A gRPC Allocator whose first Allocate sends its fd (buffer 42) on the
// broker socket only once the caller's deadline has passed, as a busy
// hallocd may; the next ones (buffers 43, ...) at once. Each echoes the
// call id, as hallocd does.
class LateAllocate final : public v1::Allocator::Service {
 public:
  LateAllocate(FakeBroker* broker, UniqueFd late) : broker_(broker), late_(std::move(late)) {}
  grpc::Status Allocate(grpc::ServerContext* ctx, const v1::AllocateRequest* req,
                        v1::AllocateResponse* resp) override {
    const uint64_t id = next_id_++;
    UniqueFd fd = id == 42 ? std::move(late_) : Memfd();
    if (id == 42) {
      first_call_id_ = req->call_id();
      for (int i = 0; i < 500 && !ctx->IsCancelled(); ++i) absl::SleepFor(absl::Milliseconds(10));
    }
    v1::BrokerFrame frame;
    frame.mutable_buffer()->set_buffer_id(id);
    frame.mutable_buffer()->set_call_id(req->call_id());
    broker_->Send(frame, {fd.get()});
    fd.reset();  // before the test looks: only the client's copy is left
    if (id == 42) late_sent_.Notify();
    resp->add_buffers()->set_id(id);
    return grpc::Status::OK;
  }
  uint64_t first_call_id() const { return first_call_id_; }
  // Once the late fd is in the broker socket.
  bool WaitLateSent() { return late_sent_.WaitForNotificationWithTimeout(absl::Seconds(10)); }

 private:
  FakeBroker* const broker_;
  UniqueFd late_;
  std::atomic<uint64_t> next_id_{42};
  std::atomic<uint64_t> first_call_id_{0};
  absl::Notification late_sent_;
};

// Before, the late fd waited in the client for a taker until something
// came on the socket twice the timeout later (never, if nothing did), and
// the buffer stayed charged to the client.
TEST(ClientAllocateTest, TheFdsOfAGrpcAllocateThatGaveUpAreClosedAndGivenBack) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  LateAllocate service(&broker, std::move(memfd));  // then only the client's copy is left
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  ConnectOptions options = broker.options(absl::Seconds(1));
  options.broker_fast_path = false;
  absl::StatusOr<Client> c = Client::Connect(options);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::BufferDescriptor desc;
  desc.set_size(4096);
  EXPECT_EQ(c->Allocate(desc).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(service.first_call_id(), 0u) << "the call carried no call id";
  ASSERT_TRUE(service.WaitLateSent()) << "the late fd was never sent";
  // The next Allocate reads the late record off the socket before its own.
  absl::StatusOr<Buffer> next = c->Allocate(desc);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->id(), 43u);
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Allocate's fd is still open in the client";
  // The give-back is sent without waiting: it reaches the fake a moment later.
  auto given_back = [&] {
    const std::vector<uint64_t> released = broker.released_ids();
    return std::find(released.begin(), released.end(), 42u) != released.end();
  };
  for (int i = 0; i < 1000 && !given_back(); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(given_back()) << "buffer 42, which the caller never received, was not given back";
  server->Shutdown();
}

}  // namespace
}  // namespace halloc
