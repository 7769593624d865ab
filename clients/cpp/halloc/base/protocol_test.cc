#include "clients/cpp/halloc/base/protocol.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace halloc {
namespace {

class ProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-protocol-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    xdg_ = tmpl;
    ASSERT_EQ(::chmod(xdg_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((xdg_ + "/halloc").c_str(), 0755), 0);
    std::ofstream(xdg_ + "/halloc/broker.sock") << "";  // a user's own hallocd's
    ::setenv("XDG_RUNTIME_DIR", xdg_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("XDG_RUNTIME_DIR");
    std::filesystem::remove_all(xdg_);
  }
  std::string xdg_;
};

// Root's hallocd serves the machine from /run/halloc: an XDG_RUNTIME_DIR
// carried over (sudo -E) does not move it into a user's directory.
TEST_F(ProtocolTest, RootTakesNoDirectoryFromItsEnvironment) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  EXPECT_EQ(DefaultSocketDir(), "/run/halloc");
  EXPECT_EQ(ClientSocketDir(), "/run/halloc");
}

// ClientSocketDir() as uid 65534 sees it (a child process), with
// XDG_RUNTIME_DIR as the test set it or, `unset`, without it.
std::string ClientSocketDirOfAUser(bool unset = false) {
  int p[2];
  if (::pipe(p) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(10);
    }
    if (unset) ::unsetenv("XDG_RUNTIME_DIR");
    const std::string dir = ClientSocketDir();
    ::_exit(::write(p[1], dir.data(), dir.size()) == static_cast<ssize_t>(dir.size()) ? 0 : 11);
  }
  ::close(p[1]);
  std::string got;
  char buf[256];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) got.append(buf, n);
  ::close(p[0]);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    return "child failed (10: no uid 65534 here)";
  }
  return got;
}

// A user's hallocd binds in $XDG_RUNTIME_DIR/halloc; a user's client looks
// there first and, where nothing is, reaches the machine's in /run/halloc
// (a login session always has XDG_RUNTIME_DIR set).
TEST_F(ProtocolTest, AUsersClientFindsItsOwnHallocdElseTheMachines) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  EXPECT_EQ(ClientSocketDirOfAUser(), xdg_ + "/halloc");
  EXPECT_EQ(ClientSocketDirOfAUser(/*unset=*/true), "/run/halloc");
  std::filesystem::remove(xdg_ + "/halloc/broker.sock");
  EXPECT_EQ(ClientSocketDirOfAUser(), "/run/halloc") << "nothing of the user's own there";
}

// Both sockets come from one directory: a control.sock alone (planted, or a
// hallocd binding its second socket) takes the broker socket along, so a
// session's token never reaches a control socket found elsewhere than the
// broker socket that gave it.
TEST_F(ProtocolTest, TheTwoSocketsAreNeverFoundInTwoDirectories) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  std::filesystem::remove(xdg_ + "/halloc/broker.sock");
  std::ofstream(xdg_ + "/halloc/control.sock") << "";
  EXPECT_EQ(ClientSocketDirOfAUser(), xdg_ + "/halloc");
}

}  // namespace
}  // namespace halloc
