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

// A listener with a backlog of one, that starts accepting only when told
// (Open) and hands each connection to `serve`.
class Listener {
 public:
  Listener(const std::string& path, int type, std::function<void(UniqueFd)> serve)
      : serve_(std::move(serve)) {
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
    EXPECT_TRUE(addr.ok());
    fd_.reset(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
    EXPECT_EQ(::listen(fd_.get(), 0), 0);  // room for one waiting connection
    path_ = path;
    type_ = type;
  }
  ~Listener() {
    ::shutdown(fd_.get(), SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
  }
  // Takes the backlog's one place with a connection of its own; true when
  // the next non-blocking connect then fails EAGAIN (the backlog is full).
  bool Fill() {
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path_);
    filler_.reset(::socket(AF_UNIX, type_ | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (::connect(filler_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
      return false;
    }
    UniqueFd next(::socket(AF_UNIX, type_ | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    return ::connect(next.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 &&
           errno == EAGAIN;
  }
  // Accepts from now on (after `delay`).
  void Open(absl::Duration delay = absl::ZeroDuration()) {
    thread_ = std::thread([this, delay] {
      absl::SleepFor(delay);
      for (;;) {
        UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!conn) return;  // shut down
        serve_(std::move(conn));
      }
    });
  }

 private:
  std::function<void(UniqueFd)> serve_;
  UniqueFd fd_;
  UniqueFd filler_;
  std::string path_;
  int type_ = 0;
  std::thread thread_;
};

class LivenessTest : public ::testing::Test {
 protected:
  void Start(bool serving = true) {
    service_ = std::make_unique<Serving>(serving);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    broker_ = std::make_unique<Listener>(dir_ / "broker.sock", SOCK_SEQPACKET, [this](UniqueFd c) {
      (void)SendRecord(c.get(), "hello", {}, false);
      absl::MutexLock lock(&mu_);
      greeted_.push_back(std::move(c));
    });
    control_ = std::make_unique<Listener>(dir_ / "control.sock", SOCK_STREAM, [this](UniqueFd c) {
      grpc::AddInsecureChannelFromFd(server_.get(), c.release());
    });
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
  std::unique_ptr<Listener> broker_;
  std::unique_ptr<Listener> control_;
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
