// What the fault tests against a real hallocd binary share
// (fault_test.cc, fault_restart_test.cc): a fixture that starts hallocd and
// takes snapshots of what must come back after every fault (hallocd's own
// fd count, its live buffers and sessions), and the broker protocol by
// hand for forked children (a forked child of a gRPC process must not use
// gRPC).
#ifndef HALLOC_TESTS_INTEGRATION_FAULT_TESTING_H_
#define HALLOC_TESTS_INTEGRATION_FAULT_TESTING_H_

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "tests/integration/hallocd_process.h"

namespace halloc::testing {

inline constexpr char kPermissive[] =
    "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
    "max_cpu_access: CPU_ACCESS_READ_WRITE }\n";


// What must come back after every fault.
struct Snapshot {
  int fds = -1;
  uint64_t live = 0;
  uint64_t sessions = 0;
  bool operator==(const Snapshot& o) const {
    return fds == o.fds && live == o.live && sessions == o.sessions;
  }
  bool operator!=(const Snapshot& o) const { return !(*this == o); }
};

inline std::ostream& operator<<(std::ostream& os, const Snapshot& s) {
  return os << "{fds " << s.fds << ", live_buffers " << s.live << ", sessions "
            << s.sessions << "}";
}

// --- The broker protocol by hand (for the children: no gRPC) ----------------

// NextFrame (clients/cpp/halloc/broker_conn.h) within `timeout_ms`.
inline absl::StatusOr<v1::BrokerFrame> RecvFrame(int fd, int timeout_ms,
                                                 std::vector<UniqueFd>* fds = nullptr) {
  return NextFrame(fd, absl::Now() + absl::Milliseconds(timeout_ms), fds);
}

inline v1::BrokerRequest AllocateRequest(uint64_t request_id, uint64_t size, uint32_t count = 1) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_allocate()->mutable_desc()->set_size(size);
  req.mutable_allocate()->set_count(count);
  return req;
}

// Blocks forever (until SIGKILL; the alarm bounds it).
[[noreturn]] inline void Hang() {
  for (;;) pause();
}

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);  // writes to peers that died fail instead
    opts_.control_socket = dir_ / "control.sock";
    opts_.broker_socket = dir_ / "broker.sock";
    opts_.timeout = absl::Seconds(5);
  }
  void TearDown() override { KillDaemon(); }

  // Starts hallocd (another one on the same paths each time: it replaces
  // the stale sockets of the last), its stderr in a new log.
  void StartDaemon(const std::string& policy = kPermissive) {
    absl::StatusOr<std::unique_ptr<HallocdProcess>> d =
        HallocdProcess::Start(dir_.path(), {policy, 0, {}});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    pid_ = daemon_->pid();
    // The readiness probe was a connection too; WarmUp waits until hallocd
    // has dropped it.
    stub_ = v1::Allocator::NewStub(grpc::CreateChannel(
        "unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
  }
  void KillDaemon() {
    if (daemon_) daemon_->Kill();
    pid_ = -1;
  }
  std::string Log() const { return daemon_ ? daemon_->Log() : std::string(); }

  v1::StatsResponse Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(3)));
    v1::StatsResponse resp;
    const grpc::Status s = stub_->Stats(&ctx, v1::StatsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << "Stats: " << s.error_message();
    return resp;
  }
  Snapshot Snap() {
    Snapshot s;
    s.fds = daemon_->Fds();
    const v1::StatsResponse st = Stats();
    s.live = st.live_buffers();
    s.sessions = st.sessions();
    return s;
  }
  // Polls until hallocd is back at `want` (at most `timeout`); the last
  // snapshot seen.
  Snapshot WaitFor(const Snapshot& want, absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    Snapshot now = Snap();
    while (now != want && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
      now = Snap();
    }
    return now;
  }
  // Polls until `pred(Snap())` (at most `timeout`).
  bool WaitUntil(const std::function<bool(const Snapshot&)>& pred,
                 absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      if (pred(Snap())) return true;
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  // One full client life (connect, allocate, map, write, release, close).
  absl::Status ServeOneClient() {
    const absl::Time start = absl::Now();
    absl::StatusOr<Client> c = Client::Connect(opts_);
    if (!c.ok()) return c.status();
    absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(1 << 16));
    if (!b.ok()) return b.status();
    absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite);
    if (!m.ok()) return m.status();
    memset(m->data(), 0x5a, m->size());
    if (absl::Status s = c->Release(b->id()); !s.ok()) return s;
    if (absl::Now() - start > absl::Seconds(10)) {
      return absl::DeadlineExceededError(
          absl::StrCat("a client took ", absl::FormatDuration(absl::Now() - start)));
    }
    return absl::OkStatus();
  }

  // Runs one client life, then waits until hallocd's fds, buffers and
  // sessions stop moving: the baseline the test's action must return to.
  Snapshot WarmUp() {
    EXPECT_TRUE(ServeOneClient().ok());
    Snapshot last = Snap();
    int stable = 0;
    for (int i = 0; i < 200 && stable < 5; ++i) {
      absl::SleepFor(absl::Milliseconds(20));
      const Snapshot now = Snap();
      stable = (now == last && now.live == 0 && now.sessions == 0) ? stable + 1 : 0;
      last = now;
    }
    EXPECT_EQ(stable, 5) << "hallocd did not settle after a warm-up: " << last;
    return last;
  }

  testing::TempDir dir_{"fault", 0755};
  ConnectOptions opts_;
  std::unique_ptr<HallocdProcess> daemon_;
  pid_t pid_ = -1;
  std::unique_ptr<v1::Allocator::Stub> stub_;
};


}  // namespace halloc::testing

#endif  // HALLOC_TESTS_INTEGRATION_FAULT_TESTING_H_
