// What the broker's identity tests share (broker_identity_test.cc: whom
// each record speaks for; broker_grants_test.cc: Import, Share and Revoke on
// the broker): a broker over a memfd core in a fresh directory, a policy
// that trusts only the test's own executable, and the test child that
// verifies as it and then execs python ("trusted-then-python",
// broker_identity_testing.cc; link with :test_child_main).
#ifndef HALLOC_SERVICE_BROKER_IDENTITY_TESTING_H_
#define HALLOC_SERVICE_BROKER_IDENTITY_TESTING_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "halloc/v1/broker.pb.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"
#include "service/broker.h"

namespace halloc {

class BrokerIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "broker.sock";
    // Read-only views bind the test's own uid (hallocd's here) as any
    // other: run as a user, its shares to itself are read-only too.
    core_ = std::make_unique<Allocator>(
        std::make_unique<MemfdBackend>(UdmabufSources::ThisKernel(), /*owner=*/0), Limits());
  }
  void TearDown() override { broker_.reset(); }

  // Starts the broker on `path_` (in the test's directory).
  void StartBroker() {
    absl::StatusOr<std::unique_ptr<Broker>> b = Broker::Start(path_, 0600, core_.get());
    ASSERT_TRUE(b.ok()) << b.status();
    broker_ = *std::move(b);
  }

  testing::TempDir dir_{"broker-identity-test"};
  std::string path_;
  std::unique_ptr<Allocator> core_;
  std::unique_ptr<Broker> broker_;  // gone before core_
};

// The status code of a fast-path Allocate of one page on `sock`.
int AllocateCode(int sock);

// Only the test's executable (client "trusted") may allocate or share, and
// it shares with anyone; anyone else is client "others", which may import
// what is shared with it and do nothing else.
void TrustOnlyThisExecutable(Allocator& core);

inline constexpr char kPython[] = "/usr/bin/python3";

// In a test child: a connection to the broker at `path`, verified as this
// executable and trusted with one Allocate; the child exits (1, 2) if not.
BrokerConnection TrustedOrExit(const std::string& path);

// `req` sent on a connection to the broker at `path` by python, exec'd by
// the process that verified it (and was trusted: TrustedOrExit): the reply.
absl::StatusOr<v1::BrokerReply> AskedAfterExec(const std::string& path,
                                               const v1::BrokerRequest& req);

}  // namespace halloc

#endif  // HALLOC_SERVICE_BROKER_IDENTITY_TESTING_H_
