// The real hallocd binary: starts, serves, and exits 0 on SIGTERM with its
// sockets removed.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

std::string HallocdPath() {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/service/hallocd");
}

class HallocdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    opts_.control_socket = dir_ / "control.sock";
    opts_.broker_socket = dir_ / "broker.sock";
  }
  void TearDown() override { daemon_ = Subprocess(); }  // SIGKILLed and reaped
  // hallocd on this test's sockets, with `more` flags.
  absl::StatusOr<Subprocess> Spawn(std::vector<std::string> more = {}) {
    SpawnOptions o;
    o.argv = {HallocdPath(), "--control_socket=" + opts_.control_socket,
              "--broker_socket=" + opts_.broker_socket};
    o.argv.insert(o.argv.end(), more.begin(), more.end());
    return Subprocess::Spawn(o);
  }
  void StartDaemon(const std::string& policy = "") {
    absl::StatusOr<Subprocess> d = Spawn({"--policy=" + policy});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }
  absl::StatusOr<Client> ConnectWithRetry() {
    absl::StatusOr<Client> c = absl::UnavailableError("not tried");
    for (int i = 0; i < 2000 && !c.ok(); ++i) {
      c = Client::Connect(opts_);
      if (!c.ok()) absl::SleepFor(absl::Milliseconds(10));
    }
    return c;
  }
  int WaitExit() { return *daemon_.Wait(); }

  testing::TempDir dir_{"hallocd-test"};
  ConnectOptions opts_;
  Subprocess daemon_;
};

TEST_F(HallocdTest, ServesAndExitsCleanlyOnSigterm) {
  StartDaemon();
  absl::StatusOr<Client> c = ConnectWithRetry();
  ASSERT_TRUE(c.ok()) << c.status();
  struct stat st;
  ASSERT_EQ(stat(opts_.broker_socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(stat(opts_.control_socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(1 << 16));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(daemon_.Signal(SIGTERM));
  const int status = WaitExit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(stat(opts_.broker_socket.c_str(), &st), 0);
  EXPECT_NE(stat(opts_.control_socket.c_str(), &st), 0);
  // The fd we hold stays valid after the daemon is gone.
  absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite);
  ASSERT_TRUE(m.ok());
  m->as<char>()[0] = 1;
}

TEST_F(HallocdTest, SighupReloadsThePolicyAndKeepsItOnABrokenFile) {
  const std::string file = dir_ / "policy.textproto";
  auto write = [&](const std::string& text) {
    FILE* f = fopen(file.c_str(), "w");
    fputs(text.c_str(), f);
    fclose(f);
    chmod(file.c_str(), 0644);  // hallocd reads no group-writable policy (umask 002)
  };
  // The test's uid (root, or the user running it) may only allocate small
  // buffers at first.
  const std::string me = absl::StrCat("clients { name: \"me\" match { uids: ", ::geteuid(),
                                      " } usages: \"*\" heaps: \"*\" "
                                      "max_cpu_access: CPU_ACCESS_READ_WRITE");
  write(me + " max_buffer_bytes: 8192 }\n");
  StartDaemon(file);
  absl::StatusOr<Client> c = ConnectWithRetry();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Allocate(BlobDescriptor(1 << 20)).status().code(),
            absl::StatusCode::kPermissionDenied);
  write(me + " }\n");
  ASSERT_TRUE(daemon_.Signal(SIGHUP));
  absl::Status s = absl::UnknownError("not tried");
  for (int i = 0; i < 2000 && !s.ok(); ++i) {
    s = c->Allocate(BlobDescriptor(1 << 20)).status();
    if (!s.ok()) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(s.ok()) << s;
  write("this is { not a policy");
  ASSERT_TRUE(daemon_.Signal(SIGHUP));
  uint64_t failures = 0;
  for (int i = 0; i < 2000 && failures == 0; ++i) {
    failures = c->Stats()->policy_reload_failures();
    if (failures == 0) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(failures, 1u);
  EXPECT_TRUE(c->Allocate(BlobDescriptor(1 << 20)).ok());  // old policy kept
  EXPECT_EQ(c->Stats()->policy_source(), file);
}

TEST_F(HallocdTest, RefusesToStartOverALiveDaemon) {
  StartDaemon();
  ASSERT_TRUE(ConnectWithRetry().ok());
  absl::StatusOr<Subprocess> second = Spawn();
  ASSERT_TRUE(second.ok()) << second.status();
  const int status = *second->Wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_TRUE(Client::Connect(opts_).ok());  // the first one is unharmed
}

// A size limit near 2^64 would let page rounding and count × size wrap.
TEST_F(HallocdTest, RefusesAMaxBufferBytesThatCouldWrap) {
  for (const char* bad : {"--max_buffer_bytes=0", "--max_buffer_bytes=18446744073709551615"}) {
    absl::StatusOr<Subprocess> d = Spawn({bad});
    ASSERT_TRUE(d.ok()) << d.status();
    const std::optional<int> status = d->Wait(absl::Seconds(10));
    ASSERT_TRUE(status.has_value()) << "hallocd started with " << bad;
    ASSERT_TRUE(WIFEXITED(*status)) << bad;
    EXPECT_NE(WEXITSTATUS(*status), 0) << bad;
  }
  absl::StatusOr<Subprocess> d = Spawn({"--max_buffer_bytes=1099511627776"});  // 1 TiB
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = *std::move(d);
  EXPECT_TRUE(ConnectWithRetry().ok());
}

// Flags that would leave hallocd without a usable socket or gRPC server
// are refused at start with a clear error, not taken as something else.
TEST_F(HallocdTest, RefusesFlagsItCannotServeWith) {
  for (const char* bad :
       {"--socket_mode=rw", "--socket_mode=0o660", "--socket_mode=99", "--socket_mode=660x",
        "--socket_mode=4755", "--socket_mode=", "--grpc_max_threads=0", "--grpc_max_threads=1",
        "--grpc_max_threads=-3", "--grpc_max_streams_per_connection=0",
        "--grpc_max_message_bytes=100", "--grpc_max_message_bytes=-1",
        "--metrics_scraper_uids=prometheus", "--metrics_scraper_uids=0,-1"}) {
    absl::StatusOr<Subprocess> d = Spawn({bad});
    ASSERT_TRUE(d.ok()) << d.status();
    const std::optional<int> status = d->Wait(absl::Seconds(10));
    ASSERT_TRUE(status.has_value()) << "hallocd started with " << bad;
    ASSERT_TRUE(WIFEXITED(*status)) << bad << ": not a clean exit";
    EXPECT_EQ(WEXITSTATUS(*status), 1) << bad;
  }
  // The least it accepts serves.
  absl::StatusOr<Subprocess> d =
      Spawn({"--grpc_max_threads=4", "--grpc_max_streams_per_connection=1", "--socket_mode=600",
             "--grpc_max_message_bytes=4096"});
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = *std::move(d);
  absl::StatusOr<Client> c = ConnectWithRetry();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Stats().ok()) << "a gRPC call";
  struct stat st;
  ASSERT_EQ(::stat(opts_.control_socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(HallocdTest, ReplacesAStaleSocket) {
  StartDaemon();
  ASSERT_TRUE(ConnectWithRetry().ok());
  daemon_.Signal(SIGKILL);  // leaves its socket files behind
  WaitExit();
  StartDaemon();
  EXPECT_TRUE(ConnectWithRetry().ok());
}

// A user's hallocd binds in $XDG_RUNTIME_DIR/halloc, and only if that is
// a real directory: a link there (to a directory of anyone's choosing) is
// refused before anything is bound or chmod-ed through it.
TEST_F(HallocdTest, RefusesAUserSocketDirThatIsALink) {
  constexpr uid_t kUser = 65534;
  const std::string as_user = absl::StrCat("--reuid=", kUser);
  const std::string as_group = absl::StrCat("--regid=", kUser);
  const std::vector<std::string> setpriv = {"/usr/bin/setpriv", as_user, as_group,
                                            "--clear-groups"};
  {
    SpawnOptions probe{.argv = setpriv};
    probe.argv.push_back("/bin/true");
    absl::StatusOr<Subprocess> p = Subprocess::Spawn(probe);
    std::optional<int> st = p.ok() ? p->Wait(absl::Seconds(10)) : std::nullopt;
    if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
      GTEST_SKIP() << "cannot run as uid " << kUser
                   << " here (not root, or a user namespace that maps only one uid)";
    }
  }
  const std::string run = dir_ / "run", elsewhere = dir_ / "elsewhere";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  for (const std::string& d : {run, elsewhere}) {
    ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
    ASSERT_EQ(::chown(d.c_str(), kUser, kUser), 0);
  }
  ASSERT_EQ(::symlink(elsewhere.c_str(), (run + "/halloc").c_str()), 0);
  const std::string log = dir_ / "stderr";
  auto start = [&]() -> absl::StatusOr<Subprocess> {
    SpawnOptions o{.argv = setpriv};
    o.argv.push_back(HallocdPath());
    o.env = EnvironmentWith({"XDG_RUNTIME_DIR=" + run});
    const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (err < 0) return absl::InternalError("cannot open the log");
    o.stderr_fd = err;
    absl::StatusOr<Subprocess> d = Subprocess::Spawn(o);
    ::close(err);
    return d;
  };
  absl::StatusOr<Subprocess> refused = start();
  ASSERT_TRUE(refused.ok()) << refused.status();
  const std::optional<int> status = refused->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value()) << "hallocd started over a link";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
  std::ifstream in(log);
  const std::string said((std::istreambuf_iterator<char>(in)), {});
  EXPECT_TRUE(absl::StrContains(said, "is not a directory")) << said;
  EXPECT_TRUE(std::filesystem::is_empty(elsewhere)) << "bound through the link";

  // The same as a real directory serves (what refused was the link).
  ASSERT_EQ(::unlink((run + "/halloc").c_str()), 0);
  absl::StatusOr<Subprocess> d = start();
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = *std::move(d);
  opts_.control_socket = run + "/halloc/control.sock";
  opts_.broker_socket = run + "/halloc/broker.sock";
  absl::StatusOr<Client> c = ConnectWithRetry();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Stats().ok());
}

}  // namespace
}  // namespace halloc
