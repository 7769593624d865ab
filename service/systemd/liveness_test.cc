// The watchdog's probe against stand-ins for hallocd's two sockets: a
// broker listener that greets each connection with one record, and a gRPC
// server that answers Health/Check on the connections it is handed. Any
// local user can keep a listener's backlog full (connecting and closing in
// a loop faster than hallocd accepts): the probe must wait for room there,
// not give up at once, or systemd kills a hallocd that serves everyone.
#include "service/systemd/liveness.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/held_listener_testing.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class Serving final : public grpc::health::v1::Health::Service {
 public:
  explicit Serving(bool serving) : serving_(serving) {}
  grpc::Status Check(grpc::ServerContext*, const HealthCheckRequest*,
                     HealthCheckResponse* resp) override {
    resp->set_status(serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
    return grpc::Status::OK;
  }

 private:
  const bool serving_;
};

using testing::HeldListener;

class LivenessTest : public ::testing::Test {
 protected:
  void Start(bool serving = true) {
    service_ = std::make_unique<Serving>(serving);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    broker_ =
        std::make_unique<HeldListener>(dir_ / "broker.sock", SOCK_SEQPACKET, [this](UniqueFd c) {
          (void)SendRecord(c.get(), "hello", {}, false);
          absl::MutexLock lock(&mu_);
          greeted_.push_back(std::move(c));
        });
    control_ = std::make_unique<HeldListener>(
        dir_ / "control.sock", SOCK_STREAM,
        [this](UniqueFd c) { grpc::AddInsecureChannelFromFd(server_.get(), c.release()); });
  }
  void TearDown() override {
    broker_.reset();
    control_.reset();
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }
  absl::Status Probe(absl::Duration timeout) {
    LivenessProbe probe(dir_ / "control.sock", dir_ / "broker.sock");
    return probe.Check(timeout);
  }

  testing::TempDir dir_{"liveness-test"};
  std::unique_ptr<Serving> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HeldListener> broker_;
  std::unique_ptr<HeldListener> control_;
  absl::Mutex mu_;
  std::vector<UniqueFd> greeted_ ABSL_GUARDED_BY(mu_);
};

TEST_F(LivenessTest, AnswersWhenBothSocketsServe) {
  Start();
  broker_->Open();
  control_->Open();
  absl::Status s = Probe(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(LivenessTest, WaitsForRoomInAFullBacklog) {
  Start();
  ASSERT_TRUE(broker_->Fill()) << "the broker's backlog is not full";
  ASSERT_TRUE(control_->Fill()) << "the control socket's backlog is not full";
  // Both start accepting a moment after the probe began.
  broker_->Open(absl::Milliseconds(300));
  control_->Open(absl::Milliseconds(300));
  absl::Status s = Probe(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s << " (gave up on a full backlog)";
}

TEST_F(LivenessTest, GivesUpAtItsTimeoutWhenNothingAccepts) {
  Start();
  ASSERT_TRUE(broker_->Fill());
  const absl::Time start = absl::Now();
  absl::Status s = Probe(absl::Milliseconds(200));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  broker_->Open();  // the control socket, full and never accepting
  ASSERT_TRUE(control_->Fill());
  s = Probe(absl::Seconds(2));  // time for the broker's greeting on a loaded machine
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("control socket"), std::string::npos) << s;
}

TEST_F(LivenessTest, AControlSocketNotServingIsUnavailable) {
  Start(/*serving=*/false);
  broker_->Open();
  control_->Open();
  absl::Status s = Probe(absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("not SERVING"), std::string::npos) << s;
}

}  // namespace
}  // namespace halloc
