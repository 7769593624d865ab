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
  EXPECT_EQ(DefaultSocketPath(kBrokerSocketFile), "/run/halloc/broker.sock");
}

// A user's hallocd binds in $XDG_RUNTIME_DIR/halloc; a user's client looks
// there first and, where nothing is, reaches the machine's in /run/halloc
// (a login session always has XDG_RUNTIME_DIR set).
TEST_F(ProtocolTest, AUsersClientFindsItsOwnHallocdElseTheMachines) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as another uid";
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(10);
    }
    if (DefaultSocketDir() != xdg_ + "/halloc") ::_exit(11);
    if (DefaultSocketPath(kBrokerSocketFile) != xdg_ + "/halloc/broker.sock") ::_exit(12);
    if (DefaultSocketPath(kControlSocketFile) != "/run/halloc/control.sock") ::_exit(13);
    ::unsetenv("XDG_RUNTIME_DIR");
    if (DefaultSocketPath(kBrokerSocketFile) != "/run/halloc/broker.sock") ::_exit(14);
    ::_exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: no uid 65534 here; 11: the daemon's directory; 12: its own hallocd's socket "
         "not found; 13: no fallback to /run/halloc; 14: no fallback without XDG_RUNTIME_DIR";
}

}  // namespace
}  // namespace halloc
