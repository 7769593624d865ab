// The health service alone, over an in-process channel.
#include "service/health.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class HealthServiceTest : public ::testing::Test {
 protected:
  explicit HealthServiceTest(const StreamTimeLimits& times = {})
      : health_({"halloc.v1.Allocator"}, nullptr, nullptr, times) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    stub_ = Health::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  ~HealthServiceTest() override {
    health_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  grpc::Status Check(const std::string& service, HealthCheckResponse* resp) {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    return stub_->Check(&ctx, req, resp);
  }

  struct Watcher {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> stream;
  };
  std::unique_ptr<Watcher> Watch(const std::string& service) {
    auto w = std::make_unique<Watcher>();
    w->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    HealthCheckRequest req;
    req.set_service(service);
    w->stream = stub_->Watch(&w->ctx, req);
    return w;
  }

  HealthService health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
};

TEST_F(HealthServiceTest, CheckServesTheServerAndItsServicesUntilShutdown) {
  HealthCheckResponse resp;
  for (const char* service : {"", "halloc.v1.Allocator"}) {
    ASSERT_TRUE(Check(service, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << service;
  }
  EXPECT_EQ(Check("no.such.Service", &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  health_.Shutdown();
  ASSERT_TRUE(Check("", &resp).ok());
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
}

TEST_F(HealthServiceTest, WatchSeesNotServingAtShutdownAndEnds) {
  std::unique_ptr<Watcher> w = Watch("halloc.v1.Allocator");
  HealthCheckResponse resp;
  ASSERT_TRUE(w->stream->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  health_.Shutdown();
  ASSERT_TRUE(w->stream->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(w->stream->Read(&resp));
  EXPECT_TRUE(w->stream->Finish().ok());
}

TEST_F(HealthServiceTest, WatchOfAnUnknownServiceSaysSoAndStaysOpen) {
  std::unique_ptr<Watcher> w = Watch("no.such.Service");
  HealthCheckResponse resp;
  ASSERT_TRUE(w->stream->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  w->ctx.TryCancel();
  EXPECT_FALSE(w->stream->Read(&resp));
}

// Each watch holds a server thread: only a few at a time, and a place is
// free again once a watcher goes away.
TEST_F(HealthServiceTest, WatchesAreBounded) {
  std::vector<std::unique_ptr<Watcher>> held;
  HealthCheckResponse resp;
  for (int i = 0; i < HealthService::kMaxWatchers; ++i) {
    held.push_back(Watch(""));
    ASSERT_TRUE(held.back()->stream->Read(&resp)) << i;
  }
  std::unique_ptr<Watcher> extra = Watch("");
  EXPECT_FALSE(extra->stream->Read(&resp));
  EXPECT_EQ(extra->stream->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  held.front()->ctx.TryCancel();
  held.erase(held.begin());
  const absl::Time until = absl::Now() + absl::Seconds(10);
  for (;;) {
    std::unique_ptr<Watcher> again = Watch("");
    if (again->stream->Read(&resp)) break;
    ASSERT_EQ(again->stream->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    ASSERT_LT(absl::Now(), until) << "the cancelled watcher's place was never freed";
    absl::SleepFor(absl::Milliseconds(100));
  }
}

// A watch ends (OK, nothing more sent) once StreamTimeLimits::
// watch_lifetime old (200 ms here), so that the places rotate; a watcher
// watches again, and gets a place. Before, four watches held theirs for
// as long as their clients kept them.
class HealthLifetimeTest : public HealthServiceTest {
 protected:
  HealthLifetimeTest() : HealthServiceTest(Times()) {}
  static StreamTimeLimits Times() {
    StreamTimeLimits times;
    times.watch_lifetime = absl::Milliseconds(200);
    return times;
  }
};

TEST_F(HealthLifetimeTest, AWatchEndsAfterItsLifetimeAndItsPlaceComesFree) {
  std::vector<std::unique_ptr<Watcher>> held;
  HealthCheckResponse resp;
  for (int i = 0; i < HealthService::kMaxWatchers; ++i) {
    held.push_back(Watch(i % 2 == 0 ? "" : "no.such.Service"));
    ASSERT_TRUE(held.back()->stream->Read(&resp)) << i;
  }
  // Ended well within 10 s (the watchers' own deadline is 20 s).
  const absl::Time start = absl::Now();
  for (auto& w : held) {
    EXPECT_FALSE(w->stream->Read(&resp)) << "a message after the first: " << resp.status();
    const grpc::Status s = w->stream->Finish();
    EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // Their places are free again (a watch's place goes before its status).
  held.clear();
  for (int i = 0; i < HealthService::kMaxWatchers; ++i) {
    held.push_back(Watch(""));
    ASSERT_TRUE(held.back()->stream->Read(&resp)) << i;
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  }
}

}  // namespace
}  // namespace halloc
