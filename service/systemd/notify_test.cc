// hallocd's sd_notify messages, received the way systemd's manager receives
// them: a datagram socket named by NOTIFY_SOCKET.
#include "service/systemd/notify.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/systemd/testing.h"

namespace halloc {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using systemd_testing::Child;
using systemd_testing::NotifySocket;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

constexpr absl::Duration kTimeout = absl::Seconds(10);

class NotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    absl::StatusOr<NotifySocket> n = NotifySocket::Bind(dir_ / "notify.sock");
    ASSERT_TRUE(n.ok()) << n.status();
    notify_ = *std::move(n);
    // A valid policy to start with (and reload).
    std::ifstream example(systemd_testing::Runfile("service/policy/example.textproto"));
    std::ofstream(dir_ / "policy.textproto") << example.rdbuf();
    // hallocd reads no group-writable policy (umask 002).
    std::filesystem::permissions(dir_ / "policy.textproto", std::filesystem::perms(0644));
  }

  void Start(std::vector<std::string> env) {
    env.push_back("NOTIFY_SOCKET=" + (dir_ / "notify.sock"));
    absl::StatusOr<std::unique_ptr<Child>> c = Child::Start(
        {systemd_testing::Runfile("service/hallocd"), "--control_socket=" + control_,
         "--broker_socket=" + broker_, "--policy=" + (dir_ / "policy.textproto")},
        env, dir_ / "hallocd.log");
    ASSERT_TRUE(c.ok()) << c.status();
    hallocd_ = *std::move(c);
  }

  // The messages up to one with the line `line` into `got`; a fatal
  // failure without it.
  void Expect(const std::string& line, std::vector<std::string>* got = nullptr) {
    std::optional<std::vector<std::string>> m = notify_.Until(line, kTimeout);
    ASSERT_TRUE(m.has_value()) << "no " << line << "; log:\n" << hallocd_->Log();
    if (got != nullptr) *got = *std::move(m);
  }

  testing::TempDir dir_{"sd"};
  const std::string control_ = dir_ / "control.sock";
  const std::string broker_ = dir_ / "broker.sock";
  NotifySocket notify_;
  std::unique_ptr<Child> hallocd_;
};

// READY=1 comes only once both sockets accept: the moment it arrives, a
// broker connection is greeted and the control socket answers health
// checks, with no retry.
TEST_F(NotifyTest, ReadyOnceBothSocketsServe) {
  Start({});
  std::vector<std::string> got;
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1", &got));
  EXPECT_THAT(got.back(), HasSubstr(absl::StrCat("STATUS=serving: control ", control_,
                                                 ", broker ", broker_)));
  absl::StatusOr<UniqueFd> conn = systemd_testing::ConnectUnix(broker_, SOCK_SEQPACKET);
  ASSERT_TRUE(conn.ok()) << conn.status();
  char buf[512];
  EXPECT_GT(::recv(conn->get(), buf, sizeof(buf), 0), 0) << "no hello from the broker";
  auto stub_status = systemd_testing::CheckHealth(control_, "halloc.v1.Allocator", kTimeout);
  ASSERT_TRUE(stub_status.ok()) << stub_status.status();
  EXPECT_EQ(*stub_status, HealthStatus::SERVING);
}

// SIGHUP (systemctl reload) is bracketed by RELOADING=1 and READY=1, with
// a status line saying whether the new policy was taken; SIGTERM sends
// STOPPING=1 before hallocd exits 0.
TEST_F(NotifyTest, ReloadAndStopAreReported) {
  Start({});
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1"));
  hallocd_->Signal(SIGHUP);
  std::vector<std::string> got;
  ASSERT_NO_FATAL_FAILURE(Expect("RELOADING=1"));
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1", &got));
  EXPECT_THAT(got, Contains(HasSubstr("STATUS=serving; policy reloaded")));

  std::ofstream(dir_ / "policy.textproto") << "this is not a policy";
  hallocd_->Signal(SIGHUP);
  ASSERT_NO_FATAL_FAILURE(Expect("RELOADING=1"));
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1", &got));
  EXPECT_THAT(got, Contains(HasSubstr("policy reload rejected, old policy kept")));

  hallocd_->Signal(SIGTERM);
  ASSERT_NO_FATAL_FAILURE(Expect("STOPPING=1"));
  std::optional<int> status = hallocd_->Wait(kTimeout);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << hallocd_->Log();
}

// With WATCHDOG_USEC (WatchdogSec=), WATCHDOG=1 comes every quarter period
// (and a probe) while both sockets answer; once the broker cannot be
// reached (its socket file gone) for three quarters of it, the pings stop,
// so systemd would restart hallocd.
TEST_F(NotifyTest, WatchdogPingsOnlyWhileBothSocketsAnswer) {
  Start({"WATCHDOG_USEC=200000"});
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1"));
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(absl::StrCat("ping ", i));
    ASSERT_NO_FATAL_FAILURE(Expect("WATCHDOG=1"));
  }
  ASSERT_EQ(::unlink(broker_.c_str()), 0);
  // Pings go on for the grace after the last answer; once it is over, no
  // ping may come. The probes run one after another, so every ping sent
  // before is queued by the time the end is logged.
  const absl::Time deadline = absl::Now() + kTimeout;
  while (!absl::StrContains(hallocd_->Log(), "not pinging systemd") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_THAT(hallocd_->Log(), HasSubstr("watchdog: hallocd does not answer"));
  ASSERT_THAT(hallocd_->Log(), HasSubstr("not pinging systemd"));
  while (notify_.Next(absl::ZeroDuration())) {
  }
  EXPECT_EQ(notify_.Next(absl::Seconds(1)), std::nullopt);
}

// One failed probe (a check refused while a flood took gRPC's threads)
// leaves no gap between pings as long as WatchdogSec=. Before, a failed
// probe skipped its ping, and the next came a whole round later: twice the
// half period the pings came at, so systemd killed hallocd, every session
// with it (measured: 401 ms between pings for a 400 ms WatchdogSec).
TEST(WatchdogTest, OneFailedProbeLeavesNoGapAsLongAsWatchdogSec) {
  testing::TempDir dir{"wd"};
  absl::StatusOr<NotifySocket> n = NotifySocket::Bind(dir / "notify.sock");
  ASSERT_TRUE(n.ok()) << n.status();
  // 2 s: a loaded machine's stalls stay well inside it.
  const absl::Duration watchdog_sec = absl::Seconds(2);
  ::setenv("NOTIFY_SOCKET", (dir / "notify.sock").c_str(), 1);
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ::unsetenv("WATCHDOG_PID");
  std::atomic<int> probes{0};
  std::unique_ptr<Watchdog> w = Watchdog::StartIfEnabled([&](absl::Duration) {
    return ++probes == 2 ? absl::ResourceExhaustedError("Server Threadpool Exhausted")
                         : absl::OkStatus();
  });
  ASSERT_NE(w, nullptr);
  absl::Time last = absl::InfinitePast();
  absl::Duration widest = absl::ZeroDuration();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(n->Next(absl::Seconds(5)).has_value()) << "ping " << i;
    const absl::Time now = absl::Now();
    if (last != absl::InfinitePast()) widest = std::max(widest, now - last);
    last = now;
  }
  w.reset();
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_GE(probes.load(), 5);
  EXPECT_LT(widest, watchdog_sec) << "systemd would have killed hallocd";
}

// A probe that never answers stops the pings after the grace.
TEST(WatchdogTest, ASilentDaemonStopsThePings) {
  testing::TempDir dir{"wd"};
  absl::StatusOr<NotifySocket> n = NotifySocket::Bind(dir / "notify.sock");
  ASSERT_TRUE(n.ok()) << n.status();
  ::setenv("NOTIFY_SOCKET", (dir / "notify.sock").c_str(), 1);
  ::setenv("WATCHDOG_USEC", "200000", 1);
  ::unsetenv("WATCHDOG_PID");
  std::unique_ptr<Watchdog> w = Watchdog::StartIfEnabled(
      [](absl::Duration) { return absl::DeadlineExceededError("no answer"); });
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->grace(), absl::Milliseconds(150));
  absl::SleepFor(absl::Milliseconds(600));  // the grace and more
  while (n->Next(absl::ZeroDuration())) {
  }
  EXPECT_EQ(n->Next(absl::Milliseconds(500)), std::nullopt) << "still pinging";
  w.reset();
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("NOTIFY_SOCKET");
}

// Without WATCHDOG_USEC there is no watchdog thread and no ping.
TEST_F(NotifyTest, NoWatchdogUnlessAsked) {
  Start({});
  ASSERT_NO_FATAL_FAILURE(Expect("READY=1"));
  EXPECT_EQ(notify_.Next(absl::Milliseconds(500)), std::nullopt);
  EXPECT_THAT(hallocd_->Log(), ::testing::Not(HasSubstr("watchdog")));
}

}  // namespace
}  // namespace halloc
