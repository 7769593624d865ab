// A private in-process hallocd for tests.
//
//   #include "clients/testing/test_daemon.h"
//   TEST(MyTest, Works) {
//     auto daemon = halloc::testing::TestDaemon::Start();
//     ASSERT_TRUE(daemon.ok());
//     absl::StatusOr<halloc::Client> client = (*daemon)->Connect();
//     ...
//   }
//
// Or derive a fixture from halloc::testing::HallocTest, which starts one
// daemon per test and gives a connected `client()`.
//
// The daemon listens on sockets in a fresh directory under /tmp (Unix socket
// paths must stay short, so not $TEST_TMPDIR), removed on destruction.
#ifndef HALLOC_CLIENTS_TESTING_TEST_DAEMON_H_
#define HALLOC_CLIENTS_TESTING_TEST_DAEMON_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "service/daemon.h"

namespace halloc::testing {

class TestDaemon {
 public:
  // Starts a daemon; `options`' socket paths are filled in. Sockets are
  // mode 0666 by default so that tests may connect as other uids.
  static absl::StatusOr<std::unique_ptr<TestDaemon>> Start(
      DaemonOptions options = DefaultOptions());
  static DaemonOptions DefaultOptions();
  ~TestDaemon();

  // Connect options for this daemon (also usable from forked children).
  ConnectOptions connect_options() const;
  // The ways a test's own Client may speak to hallocd.
  enum class Via {
    kBroker,      // libhalloc's default: the broker fast path, gRPC beside
    kBrokerOnly,  // no control socket at all: what works came on the broker
    kGrpc,        // a gRPC-only client
  };
  absl::StatusOr<Client> Connect(Via via = Via::kBroker) const;

  const std::string& dir() const { return dir_; }
  Daemon& daemon() { return *daemon_; }

 private:
  TestDaemon() = default;
  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
};

// Starts a TestDaemon and connects client() before each test.
class HallocTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  TestDaemon& daemon() { return *daemon_; }
  Client& client() { return *client_; }

 private:
  std::unique_ptr<TestDaemon> daemon_;
  std::optional<Client> client_;
};

}  // namespace halloc::testing

#endif  // HALLOC_CLIENTS_TESTING_TEST_DAEMON_H_
