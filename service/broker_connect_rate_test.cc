// The broker's connect rate per uid (ConnectRate, policy
// sessions.connects_per_second), with connections made as other uids
// (connect_as_testing.h; so no-sandbox, unlike broker_test).
#include <sys/socket.h>
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/broker.h"
#include "service/connect_as_testing.h"
#include "service/connection_limits.h"
#include "service/util/log_lines_testing.h"

namespace halloc {
namespace {

// The first frame the broker sends on a new connection: its Hello, or
// the reply that refuses it.
absl::StatusOr<v1::BrokerFrame> FirstFrame(int sock) {
  return NextFrame(sock, absl::Now() + absl::Seconds(5));
}

class BrokerConnectRateTest : public ::testing::Test {
 protected:
  // A broker on a socket any uid may reach, under `sessions` (the policy's
  // SessionLimits, text format).
  void Start(const std::string& sessions) {
    if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
    core_ = std::make_unique<Allocator>(std::make_unique<MemfdBackend>(), Limits());
    absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
        "clients { name: \"all\" match { any: true } }\nsessions { " + sessions + " }\n",
        "rate.textproto");
    ASSERT_TRUE(policy.ok()) << policy.status();
    core_->SetPolicy(*policy);
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    path_ = dir_ / "broker.sock";
    absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path_, 0666, core_.get());
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }
  void TearDown() override { broker_.reset(); }

  testing::TempDir dir_{"broker-rate-test"};
  std::string path_;
  std::unique_ptr<Allocator> core_;
  std::unique_ptr<Broker> broker_;  // gone before core_
};

// A uid that opens connections faster than the policy's rate is told why
// (RESOURCE_EXHAUSTED, and when to try again) and closed before any setup;
// another uid has a bucket of its own, and root none.
TEST_F(BrokerConnectRateTest, ConnectionsPastTheirUidsRateAreToldWhy) {
  ASSERT_NO_FATAL_FAILURE(Start("max_per_uid: 2 connects_per_second: 1"));
  if (IsSkipped()) return;
  std::vector<UniqueFd> held;
  // A burst of two (twice the rate, and the uid's connection limit), then
  // refused (within a second: no token earned back).
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(65534, path_, SOCK_SEQPACKET);
    if (absl::IsUnimplemented(c.status())) GTEST_SKIP() << c.status();
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<v1::BrokerFrame> first = FirstFrame(c->get());
    ASSERT_TRUE(first.ok()) << first.status();
    if (i < 2) {
      EXPECT_TRUE(first->has_hello()) << "connection " << i << ": " << first->DebugString();
    } else {
      ASSERT_TRUE(first->has_reply()) << first->DebugString();
      const absl::Status refused = ReplyStatus(first->reply());
      EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
      EXPECT_TRUE(absl::StrContains(refused.message(),
                                    "uid 65534 opens broker connections faster than 1 a second"))
          << refused;
      EXPECT_GT(first->reply().retry_after_ms(), 0u);
      EXPECT_LE(first->reply().retry_after_ms(), 1000u);
      EXPECT_TRUE(WaitReadable(c->get(), 5000).ok());
      absl::StatusOr<Record> end = ReceiveRecord(c->get(), false);
      EXPECT_FALSE(end.ok()) << "the refused connection was left open";
    }
    held.push_back(*std::move(c));
  }
  EXPECT_EQ(broker_->rate_limited_total(), 1u);
  absl::StatusOr<UniqueFd> other = testing::ConnectAs(65533, path_, SOCK_SEQPACKET);
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::BrokerFrame> first = FirstFrame(other->get());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->has_hello()) << "uid 65533 was held to 65534's bucket";
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<BrokerConnection> root = ConnectBroker(path_, absl::Seconds(5));
    EXPECT_TRUE(root.ok()) << "root, connection " << i << ": " << root.status();
  }
  EXPECT_EQ(broker_->rate_limited_total(), 1u);
}

// The uids of a range in the subuid file (a user's subordinate uids,
// which newuidmap lets it connect as) draw on one bucket, refused at the
// first check; a uid outside the range has its own.
TEST_F(BrokerConnectRateTest, ASubordinateRangesUidsShareOneRate) {
  const std::string subuid = dir_ / "subuid";
  std::ofstream(subuid) << "someone:200000:65536\nsomeone:400000:65536\n";
  ASSERT_EQ(::chmod(subuid.c_str(), 0644), 0);  // whatever the umask
  const std::string before = SubordinateUidFile();
  SetSubordinateUidFile(subuid);  // read by the broker Start makes
  Start("max_per_uid: 2 connects_per_second: 1");
  SetSubordinateUidFile(before);
  if (IsSkipped() || HasFatalFailure()) return;
  LogLines lines("broker: refused pid ");
  const absl::Time first_refusal = absl::Now();  // about: the log window's start
  for (uid_t uid : {200000u, 265535u, 200002u, 265536u}) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(uid, path_, SOCK_SEQPACKET);
    if (absl::IsUnimplemented(c.status())) GTEST_SKIP() << c.status();
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<v1::BrokerFrame> first = FirstFrame(c->get());
    ASSERT_TRUE(first.ok()) << first.status();
    if (uid != 200002) {
      EXPECT_TRUE(first->has_hello()) << "uid " << uid << ": " << first->DebugString();
      continue;
    }
    ASSERT_TRUE(first->has_reply()) << first->DebugString();
    const absl::Status refused = ReplyStatus(first->reply());
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_TRUE(absl::StrContains(
        refused.message(), "uid 200002 (with every uid of the ranges of \"someone\" in " + subuid +
                               ", rated as one) opens broker connections faster than 1 a "
                               "second"))
        << refused;
  }
  EXPECT_EQ(broker_->rate_limited_total(), 1u);
  // Refusals before the peer is charged are its owner's: eight more uids
  // of its two ranges take one uid's share of the refusal lines (3 a
  // second), not one share each, nor one a range.
  // (A token earned back on a slow machine admits one: not counted.)
  uint64_t refused = 1;
  for (uid_t uid : {200010u, 400010u, 200011u, 400011u, 200012u, 400012u, 200013u, 400013u}) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(uid, path_, SOCK_SEQPACKET);
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<v1::BrokerFrame> first = FirstFrame(c->get());
    ASSERT_TRUE(first.ok()) << first.status();
    refused += first->has_reply() ? 1 : 0;
  }
  EXPECT_GE(refused, 5u) << "the range's bucket was not empty";
  EXPECT_EQ(broker_->rate_limited_total(), refused);
  // The broker's refusal lines: 3 a second for one uid.
  ExpectOneUidsShare(lines, "ranges of \"someone\"", 3, first_refusal);
}

// libhalloc's ConnectBroker, refused for its uid's rate, connects again
// once the reply says there is room, within its timeout; past the timeout
// it returns the refusal at once.
TEST_F(BrokerConnectRateTest, ConnectBrokerWaitsOutTheRateWithinItsTimeout) {
  ASSERT_NO_FATAL_FAILURE(Start("max_per_uid: 2 connects_per_second: 1"));
  if (IsSkipped()) return;
  auto connect = [&](absl::Duration timeout) {
    return testing::RunAs(
        65534, [&]() -> absl::StatusOr<BrokerConnection> { return ConnectBroker(path_, timeout); });
  };
  for (int i = 0; i < 2; ++i) {  // the burst, closed at once
    absl::StatusOr<BrokerConnection> c = connect(absl::Seconds(5));
    if (absl::IsUnimplemented(c.status())) GTEST_SKIP() << c.status();
    ASSERT_TRUE(c.ok()) << i << ": " << c.status();
  }
  // A token comes within a second; a 40 ms timeout never waits (a wait
  // needs 50 ms left after it).
  absl::StatusOr<BrokerConnection> hurried = connect(absl::Milliseconds(40));
  EXPECT_EQ(hurried.status().code(), absl::StatusCode::kResourceExhausted) << hurried.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<BrokerConnection> patient = connect(absl::Seconds(5));
  EXPECT_TRUE(patient.ok()) << patient.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_GE(broker_->rate_limited_total(), 2u) << "it was not refused first";
}

}  // namespace
}  // namespace halloc
