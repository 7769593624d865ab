// Socket activation with systemd's own launcher, systemd-socket-activate: it
// binds the sockets, waits for a first connection, then execs hallocd with
// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set as systemd's manager would (same
// pid, fds from 3). hallocd must serve what it is handed, or refuse a wrong
// socket with an error naming it.
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/systemd/testing.h"

namespace halloc {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using systemd_testing::Child;
using systemd_testing::ConnectUnix;
using systemd_testing::Runfile;
using systemd_testing::SystemdTool;
using systemd_testing::WaitForPath;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

constexpr absl::Duration kTimeout = absl::Seconds(20);

class ActivationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    activate_ = SystemdTool("systemd-socket-activate");
    if (activate_.empty()) GTEST_SKIP() << "systemd-socket-activate not installed (package systemd)";
    ASSERT_FALSE(dir_.path().empty());
  }

  // systemd-socket-activate `launcher_args` -- hallocd `hallocd_args`.
  void Launch(std::vector<std::string> launcher_args,
              const std::vector<std::string>& hallocd_args) {
    std::vector<std::string> argv = {activate_};
    for (const std::string& flag : systemd_testing::LauncherSanitizerEnv()) {
      // Each launcher of a chain hands the variables on.
      for (size_t i = 0; i < launcher_args.size(); ++i) {
        if (launcher_args[i] == activate_) launcher_args.insert(launcher_args.begin() + i + 1, flag);
      }
      argv.push_back(flag);
    }
    argv.insert(argv.end(), launcher_args.begin(), launcher_args.end());
    argv.push_back("--");
    argv.push_back(Runfile("service/hallocd"));
    // Its /proc/PID/exe is read, by this uid when it is not root.
    if (::geteuid() != 0) argv.push_back("--dumpable");
    argv.insert(argv.end(), hallocd_args.begin(), hallocd_args.end());
    absl::StatusOr<std::unique_ptr<Child>> c = Child::Start(argv, {}, dir_ / "hallocd.log");
    ASSERT_TRUE(c.ok()) << c.status();
    child_ = *std::move(c);
  }

  // Whether hallocd's log comes to hold `needle` within kTimeout (it may
  // greet a client before it has written the line).
  bool LogShows(const std::string& needle) const {
    const absl::Time deadline = absl::Now() + kTimeout;
    do {
      if (child_->Log().find(needle) != std::string::npos) return true;
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < deadline);
    return false;
  }

  // Wakes the launcher with a connection on `path`, then expects hallocd to
  // exit 1 with an error containing `what`.
  void ExpectRefused(const std::string& path, int type, const std::string& what) {
    ASSERT_TRUE(WaitForPath(path, kTimeout)) << child_->Log();
    absl::StatusOr<UniqueFd> conn = ConnectUnix(path, type);
    ASSERT_TRUE(conn.ok()) << conn.status();
    std::optional<int> status = child_->Wait(kTimeout);
    ASSERT_TRUE(status.has_value()) << "hallocd still runs:\n" << child_->Log();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 1) << *status;
    EXPECT_THAT(child_->Log(), AllOf(HasSubstr("hallocd failed to start"), HasSubstr(what)));
  }

  std::string activate_;
  testing::TempDir dir_{"sd"};
  std::unique_ptr<Child> child_;
};

// hallocd serves gRPC (health included) on the control socket systemd
// bound, binds the broker itself, and a client's session and Allocate work
// through both. At exit it leaves systemd's socket file in place.
TEST_F(ActivationTest, ServesTheControlSocketItWasHanded) {
  const std::string control = dir_ / "control.sock";
  const std::string broker = dir_ / "broker.sock";
  Launch({"--listen=" + control, "--fdname=control"}, {"--broker_socket=" + broker});
  ASSERT_TRUE(WaitForPath(control, kTimeout)) << child_->Log();

  // The first connection wakes the launcher, which execs hallocd.
  absl::StatusOr<HealthStatus::ServingStatus> health =
      systemd_testing::CheckHealth(control, "", kTimeout);
  ASSERT_TRUE(health.ok()) << health.status() << "\n" << child_->Log();
  EXPECT_EQ(*health, HealthStatus::SERVING);
  EXPECT_TRUE(LogShows("control unix:" + control + " (from systemd)")) << child_->Log();
  // Exec'd in place: the launcher's pid is hallocd's.
  char exe[4096] = {};
  ASSERT_GT(::readlink(absl::StrCat("/proc/", child_->pid(), "/exe").c_str(), exe,
                       sizeof(exe) - 1), 0);
  EXPECT_THAT(std::string(exe), HasSubstr("service/hallocd"));

  ConnectOptions opts;
  opts.control_socket = control;
  opts.broker_socket = broker;
  for (bool fast_path : {true, false}) {
    SCOPED_TRACE(fast_path ? "broker fast path" : "gRPC Allocate");
    opts.broker_fast_path = fast_path;
    absl::StatusOr<Client> c = Client::Connect(opts);
    ASSERT_TRUE(c.ok()) << c.status() << "\n" << child_->Log();
    absl::StatusOr<Buffer> buf = c->Allocate(BlobDescriptor(64 << 10));
    ASSERT_TRUE(buf.ok()) << buf.status();
  }

  child_->Signal(SIGTERM);
  std::optional<int> status = child_->Wait(kTimeout);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << child_->Log();
  EXPECT_EQ(::access(control.c_str(), F_OK), 0) << "hallocd removed systemd's socket";
  EXPECT_NE(::access(broker.c_str(), F_OK), 0) << "hallocd left its own socket behind";
}

// Both sockets from systemd. systemd-socket-activate makes sockets of one
// type per run and passes on the fds it was handed, so two run chained: the
// outer one holds the broker socket, where clients connect first. The
// connection that wakes hallocd is greeted, clients then get sessions and
// Allocate works on both paths, and at exit both socket files stay.
TEST_F(ActivationTest, ServesBothSocketsItWasHanded) {
  const std::string control = dir_ / "control.sock";
  const std::string broker = dir_ / "broker.sock";
  Launch({"--seqpacket", "--listen=" + broker, "--", activate_, "--listen=" + control,
          "--fdname=broker:control"},
         {});
  ASSERT_TRUE(WaitForPath(broker, kTimeout)) << child_->Log();
  // A bare connection wakes hallocd. (Not a client's: since Linux 6.16 a
  // connection inherits SO_PASSCRED from the listener at connect(), and
  // systemd-socket-activate, unlike the unit's PassCredentials=yes, never
  // sets it, so a client's records on it would go unstamped.)
  absl::StatusOr<UniqueFd> wake = ConnectUnix(broker, SOCK_SEQPACKET);
  ASSERT_TRUE(wake.ok()) << wake.status();
  char hello[512];
  ASSERT_GT(::recv(wake->get(), hello, sizeof(hello), 0), 0) << "not greeted\n" << child_->Log();
  EXPECT_TRUE(LogShows("control unix:" + control + " (from systemd), broker " + broker +
                       " (from systemd)"))
      << child_->Log();

  ConnectOptions opts;
  opts.control_socket = control;
  opts.broker_socket = broker;
  for (bool fast_path : {true, false}) {
    SCOPED_TRACE(fast_path ? "broker fast path" : "gRPC Allocate");
    opts.broker_fast_path = fast_path;
    absl::StatusOr<Client> c = Client::Connect(opts);
    ASSERT_TRUE(c.ok()) << c.status() << "\n" << child_->Log();
    absl::StatusOr<Buffer> buf = c->Allocate(BlobDescriptor(64 << 10));
    ASSERT_TRUE(buf.ok()) << buf.status();
  }
  absl::StatusOr<HealthStatus::ServingStatus> health =
      systemd_testing::CheckHealth(control, "", kTimeout);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::SERVING);

  child_->Signal(SIGTERM);
  std::optional<int> status = child_->Wait(kTimeout);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << child_->Log();
  EXPECT_EQ(::access(control.c_str(), F_OK), 0) << "hallocd removed systemd's control socket";
  EXPECT_EQ(::access(broker.c_str(), F_OK), 0) << "hallocd removed systemd's broker socket";
}

// A broker socket that is a stream socket (ListenStream= where
// ListenSequentialPacket= belongs) is refused by name.
TEST_F(ActivationTest, RefusesAStreamBrokerSocket) {
  const std::string control = dir_ / "control.sock";
  const std::string broker = dir_ / "broker.sock";
  Launch({"--listen=" + control, "--listen=" + broker, "--fdname=control:broker"}, {});
  ExpectRefused(control, SOCK_STREAM,
                "the socket named 'broker' (fd 4) is a listening SOCK_STREAM Unix socket, but "
                "hallocd needs a listening SOCK_SEQPACKET Unix socket there "
                "(ListenSequentialPacket= in its socket unit)");
}

// And a control socket that is SOCK_SEQPACKET.
TEST_F(ActivationTest, RefusesASeqpacketControlSocket) {
  const std::string control = dir_ / "control.sock";
  Launch({"--seqpacket", "--listen=" + control, "--fdname=control"},
         {"--broker_socket=" + (dir_ / "broker.sock")});
  ExpectRefused(control, SOCK_SEQPACKET,
                "the socket named 'control' (fd 3) is a listening SOCK_SEQPACKET Unix socket, "
                "but hallocd needs a listening SOCK_STREAM Unix socket there (ListenStream=");
}

// Sockets must carry the names the units give them; unnamed ones (systemd
// calls them "unknown") or others are refused, not guessed at.
TEST_F(ActivationTest, RefusesSocketsWithOtherNames) {
  for (const char* names : {"", "ctl"}) {
    SCOPED_TRACE(absl::StrCat("--fdname=", names));
    const std::string control = dir_ / absl::StrCat("c", names, ".sock");
    std::vector<std::string> args = {"--listen=" + control};
    if (names[0] != '\0') args.push_back(absl::StrCat("--fdname=", names));
    Launch(args, {"--broker_socket=" + (dir_ / "broker.sock")});
    ExpectRefused(control, SOCK_STREAM,
                  absl::StrCat("is named '", names[0] != '\0' ? names : "unknown",
                               "'; hallocd takes only sockets named 'control' and 'broker'"));
  }
}

// --control_socket naming another path than systemd's socket is a
// misconfiguration, reported as such.
TEST_F(ActivationTest, RefusesAControlFlagThatDisagrees) {
  const std::string control = dir_ / "control.sock";
  Launch({"--listen=" + control, "--fdname=control"},
         {"--control_socket=" + (dir_ / "other.sock"), "--broker_socket=" + (dir_ / "b.sock")});
  ExpectRefused(control, SOCK_STREAM,
                absl::StrCat("--control_socket=", dir_ / "other.sock",
                             ", but systemd passed that socket bound to ", control));
}

}  // namespace
}  // namespace halloc
