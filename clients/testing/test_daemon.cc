#include "clients/testing/test_daemon.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::testing {

DaemonOptions TestDaemon::DefaultOptions() {
  DaemonOptions options;
  options.socket_mode = 0666;
  options.backend = "memfd";
  // The test runs as the daemon's uid: its read-only shares to itself are
  // what it tests, not a boundary (root's are bound anyway).
  options.read_only_for_own_uid = true;
  return options;
}

absl::StatusOr<std::unique_ptr<TestDaemon>> TestDaemon::Start(
    DaemonOptions options) {
  std::unique_ptr<TestDaemon> t(new TestDaemon());
  char tmpl[] = "/tmp/halloc-test-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
  t->dir_ = tmpl;
  // Let tests that drop to other uids reach the sockets.
  ::chmod(t->dir_.c_str(), 0755);
  options.control_socket = absl::StrCat(t->dir_, "/control.sock");
  options.broker_socket = absl::StrCat(t->dir_, "/broker.sock");
  ASSIGN_OR_RETURN(t->daemon_, Daemon::Start(std::move(options)));
  return t;
}

TestDaemon::~TestDaemon() {
  daemon_.reset();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

ConnectOptions TestDaemon::connect_options() const {
  ConnectOptions o;
  o.control_socket = daemon_->options().control_socket;
  o.broker_socket = daemon_->options().broker_socket;
  return o;
}

absl::StatusOr<Client> TestDaemon::Connect(Via via) const {
  ConnectOptions o = connect_options();
  o.broker_fast_path = via != Via::kGrpc;
  if (via == Via::kBrokerOnly) o.control_socket += ".absent";
  return Client::Connect(o);
}

void HallocTest::SetUp() {
  absl::StatusOr<std::unique_ptr<TestDaemon>> d = TestDaemon::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = std::move(*d);
  absl::StatusOr<Client> c = daemon_->Connect();
  ASSERT_TRUE(c.ok()) << c.status();
  client_.emplace(std::move(*c));
}

void HallocTest::TearDown() {
  client_.reset();
  daemon_.reset();
}

}  // namespace halloc::testing
