#include "clients/cpp/halloc/base/protocol.h"

#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/functional/function_ref.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

class ProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir((xdg_ / "halloc").c_str(), 0755), 0);
    std::ofstream(xdg_ / "halloc/broker.sock") << "";  // a user's own hallocd's
    ::setenv("XDG_RUNTIME_DIR", xdg_.path().c_str(), 1);
  }
  void TearDown() override { ::unsetenv("XDG_RUNTIME_DIR"); }
  testing::TempDir xdg_{"protocol", 0755};
};

// Root's hallocd serves the machine from /run/halloc: an XDG_RUNTIME_DIR
// carried over (sudo -E) does not move it into a user's directory.
TEST_F(ProtocolTest, RootTakesNoDirectoryFromItsEnvironment) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  EXPECT_EQ(DefaultSocketDir(), "/run/halloc");
  EXPECT_EQ(ClientSocketDir(), "/run/halloc");
}

// One socket named alone brings its pair from its own directory, never
// from the default one; named, each is as named; neither, both default.
TEST_F(ProtocolTest, ASocketNamedAloneTakesItsPairFromItsDirectory) {
  ::unsetenv(kControlSocketEnv);
  ::unsetenv(kBrokerSocketEnv);
  SocketPaths p = ClientSocketPaths("", "/srv/test/b.sock");
  EXPECT_EQ(p.control, "/srv/test/control.sock");
  EXPECT_EQ(p.broker, "/srv/test/b.sock");
  p = ClientSocketPaths("/srv/test/c.sock", "");
  EXPECT_EQ(p.broker, "/srv/test/broker.sock");
  p = ClientSocketPaths("", "b.sock");
  EXPECT_EQ(p.control, "control.sock") << "a bare name: the same (working) directory";
  p = ClientSocketPaths("/a/c.sock", "/b/b.sock");
  EXPECT_EQ(p.control, "/a/c.sock");
  EXPECT_EQ(p.broker, "/b/b.sock");
  ::setenv(kBrokerSocketEnv, "/env/broker.sock", 1);
  p = ClientSocketPaths("", "");
  EXPECT_EQ(p.control, "/env/control.sock") << "the environment names it as well";
  ::unsetenv(kBrokerSocketEnv);
  p = ClientSocketPaths("", "");
  const std::string dir = ClientSocketDir();
  EXPECT_EQ(p.control, dir + "/control.sock");
  EXPECT_EQ(p.broker, dir + "/broker.sock");
}

// What a child process running as uid 65534 writes to its stdout while
// `body` runs there (the child exits 0 after it, unless it execs), or why
// it failed.
std::string OutputOfAUser(absl::FunctionRef<void()> body) {
  int p[2];
  if (::pipe(p) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    if (::dup2(p[1], STDOUT_FILENO) < 0) ::_exit(12);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setgroups(0, nullptr) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(10);
    }
    body();
    ::_exit(0);
  }
  ::close(p[1]);
  std::string got;
  char buf[256];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) got.append(buf, n);
  ::close(p[0]);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    return "child failed (10: no uid 65534 here; 11: exec or write)";
  }
  return got;
}

// ClientSocketDir() as uid 65534 sees it (a child process), with
// XDG_RUNTIME_DIR as the test set it or, `unset`, without it.
std::string ClientSocketDirOfAUser(bool unset = false) {
  return OutputOfAUser([unset] {
    if (unset) ::unsetenv("XDG_RUNTIME_DIR");
    const std::string dir = ClientSocketDir();
    if (::write(STDOUT_FILENO, dir.data(), dir.size()) != static_cast<ssize_t>(dir.size())) {
      ::_exit(11);
    }
  });
}

// A user's hallocd binds in $XDG_RUNTIME_DIR/halloc; a user's client looks
// there first and, where nothing is, reaches the machine's in /run/halloc
// (a login session always has XDG_RUNTIME_DIR set).
TEST_F(ProtocolTest, AUsersClientFindsItsOwnHallocdElseTheMachines) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  EXPECT_EQ(ClientSocketDirOfAUser(), xdg_ / "halloc");
  EXPECT_EQ(ClientSocketDirOfAUser(/*unset=*/true), "/run/halloc");
  std::filesystem::remove(xdg_ / "halloc/broker.sock");
  EXPECT_EQ(ClientSocketDirOfAUser(), "/run/halloc") << "nothing of the user's own there";
}

// Both sockets come from one directory: a control.sock alone (planted, or a
// hallocd binding its second socket) takes the broker socket along, so a
// session's token never reaches a control socket found elsewhere than the
// broker socket that gave it.
TEST_F(ProtocolTest, TheTwoSocketsAreNeverFoundInTwoDirectories) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  std::filesystem::remove(xdg_ / "halloc/broker.sock");
  std::ofstream(xdg_ / "halloc/control.sock") << "";
  EXPECT_EQ(ClientSocketDirOfAUser(), xdg_ / "halloc");
}

// What the probe (protocol_env_probe) says, run as uid 65534 from a copy of
// mode `mode` (root's, group root) in the test's directory, with
// HALLOC_BROKER_SOCKET and XDG_RUNTIME_DIR pointing at a user's files.
std::string ProbeAsAUser(const std::string& dir, mode_t mode) {
  const std::string probe = dir + "/probe";
  std::error_code ec;
  std::filesystem::copy_file(std::string(std::getenv("TEST_SRCDIR")) +
                                 "/halloc/clients/cpp/halloc/base/protocol_env_probe",
                             probe, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return "copy failed: " + ec.message();
  // (chown first: it clears the set-group-ID bit.)
  if (::chown(probe.c_str(), 0, 0) != 0 || ::chmod(probe.c_str(), mode) != 0) {
    return "chown/chmod failed";
  }
  return OutputOfAUser([&] {
    ::setenv(kBrokerSocketEnv, (dir + "/users.sock").c_str(), 1);
    ::execl(probe.c_str(), probe.c_str(), nullptr);
    ::_exit(11);
  });
}

// A program that runs set-group-ID (or set-user-ID, or with file
// capabilities) and links libhalloc takes no socket from its caller's
// environment: neither the path HALLOC_BROKER_SOCKET names nor the user's
// XDG_RUNTIME_DIR, where a user could have a socket of theirs answer as
// hallocd. The same binary without the bit does honour both.
TEST_F(ProtocolTest, APrivilegedProgramTakesNoSocketFromItsCallersEnvironment) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a set-group-ID probe as another uid";
  const std::string plain = ProbeAsAUser(xdg_.path(), 0755);
  EXPECT_EQ(plain,
            "secure=0\nbroker=" + (xdg_ / "users.sock") + "\ndir=" + (xdg_ / "halloc") + "\n");
  const std::string setgid = ProbeAsAUser(xdg_.path(), 02755);
  if (setgid.rfind("secure=0", 0) == 0) {
    GTEST_SKIP() << "exec of a set-group-ID file gave no AT_SECURE here (nosuid mount or "
                    "no_new_privs?): "
                 << setgid;
  }
  EXPECT_EQ(setgid, "secure=1\nbroker=\ndir=/run/halloc\n");
}

}  // namespace
}  // namespace halloc
