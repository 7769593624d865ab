// FrameLoans through a real in-process hallocd (memfd backend on the
// host): a shared frame goes back to its source only once its consumer let
// go of it or its time is up, and never with its grant still importable.
#include "clients/camera/loans.h"

#include <unistd.h>

#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc::camera {
namespace {

using ::halloc::testing::HallocTest;

class FrameLoansTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    CameraOptions o;
    o.width = 64;
    o.height = 32;
    o.buffer_count = 2;
    o.fps = 0;
    absl::StatusOr<std::unique_ptr<Camera>> cam = Camera::Open(client(), o);
    ASSERT_TRUE(cam.ok()) << cam.status();
    cam_ = *std::move(cam);
    ASSERT_TRUE(cam_->Start().ok());
    absl::StatusOr<Client> consumer = daemon().Connect();
    ASSERT_TRUE(consumer.ok()) << consumer.status();
    consumer_ = std::make_unique<Client>(*std::move(consumer));
  }
  // Before HallocTest's: the camera speaks through client(), which goes
  // with the daemon there.
  void TearDown() override {
    cam_.reset();
    consumer_.reset();
    HallocTest::TearDown();
  }

  // The next frame, shared read-only with this uid and lent at `at`.
  std::pair<Frame, v1::Grant> LendNext(FrameLoans& loans, absl::Time at) {
    absl::StatusOr<Frame> f = cam_->Next();
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return {};
    absl::StatusOr<v1::Grant> g =
        loans.Lend(*f, at, [&] { return cam_->ShareWithUid(*f, getuid(), v1::CPU_ACCESS_READ); });
    EXPECT_TRUE(g.ok()) << g.status();
    if (!g.ok()) return {};
    return {*f, *g};
  }

  std::unique_ptr<Camera> cam_;
  std::unique_ptr<Client> consumer_;
};

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST_F(FrameLoansTest, AFrameGoesBackOnceItsConsumerLetGo) {
  FrameLoans loans(client(), absl::Seconds(10));
  auto [frame, grant] = LendNext(loans, kT0);
  // Not imported yet: the consumer may still come for it.
  absl::StatusOr<std::vector<FrameLoans::Return>> back = loans.Collect(kT0 + absl::Seconds(1));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());
  absl::StatusOr<Buffer> got = consumer_->Import(grant.token());
  ASSERT_TRUE(got.ok()) << got.status();
  // Held: stays lent.
  back = loans.Collect(kT0 + absl::Seconds(2));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());
  EXPECT_EQ(loans.size(), 1u);
  const uint64_t id = got->id();
  { Buffer gone = *std::move(got); }
  ASSERT_TRUE(consumer_->Release(id).ok());
  // Let go, well within its time: back, and its grant revoked.
  back = loans.Collect(kT0 + absl::Seconds(3));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_EQ((*back)[0].index, frame.index);
  EXPECT_EQ((*back)[0].sequence, frame.sequence);
  EXPECT_FALSE((*back)[0].timed_out);
  EXPECT_FALSE((*back)[0].still_held);
  EXPECT_EQ(loans.size(), 0u);
  EXPECT_EQ(consumer_->Import(grant.token()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(cam_->Requeue(frame.index).ok());
}

// A consumer that takes the frame and lets go before anyone looks is not
// taken for one that never came (hallocd counts the import).
TEST_F(FrameLoansTest, AQuickConsumerIsSeenByItsImport) {
  FrameLoans loans(client(), absl::Seconds(10));
  auto [frame, grant] = LendNext(loans, kT0);
  absl::StatusOr<Buffer> got = consumer_->Import(grant.token());
  ASSERT_TRUE(got.ok()) << got.status();
  const uint64_t id = got->id();
  { Buffer gone = *std::move(got); }
  ASSERT_TRUE(consumer_->Release(id).ok());
  absl::StatusOr<std::vector<FrameLoans::Return>> back = loans.Collect(kT0);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_EQ((*back)[0].index, frame.index);
  EXPECT_FALSE((*back)[0].timed_out);
  // The next loan of the same buffer starts from the count as it is then.
  ASSERT_TRUE(cam_->Requeue(frame.index).ok());
  for (int tries = 0;; ++tries) {
    ASSERT_LT(tries, 4) << "the source never gave buffer " << frame.index << " again";
    FrameLoans again(client(), absl::Seconds(10));
    const Frame next = LendNext(again, kT0).first;
    if (next.index != frame.index) {
      ASSERT_TRUE(cam_->Requeue(next.index).ok());
      continue;
    }
    back = again.Collect(kT0);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(back->empty()) << "an import of an earlier loan counted for this one";
    break;
  }
}

TEST_F(FrameLoansTest, AFrameNeverImportedGoesBackAtItsTimeoutWithItsGrantRevoked) {
  FrameLoans loans(client(), absl::Seconds(1));
  auto [frame, grant] = LendNext(loans, kT0);
  absl::StatusOr<std::vector<FrameLoans::Return>> back =
      loans.Collect(kT0 + absl::Milliseconds(999));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());
  back = loans.Collect(kT0 + absl::Seconds(1));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_TRUE((*back)[0].timed_out);
  EXPECT_FALSE((*back)[0].still_held);
  // A consumer that comes late finds the grant gone, not a buffer the
  // source is writing again.
  EXPECT_EQ(consumer_->Import(grant.token()).status().code(), absl::StatusCode::kNotFound);
}

// memfd cannot be cut off: the consumer keeps its fd, and the Return says so.
TEST_F(FrameLoansTest, AConsumerThatKeepsAFramePastItsTimeIsReported) {
  FrameLoans loans(client(), absl::Seconds(1));
  auto [frame, grant] = LendNext(loans, kT0);
  absl::StatusOr<Buffer> got = consumer_->Import(grant.token());
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<std::vector<FrameLoans::Return>> back = loans.Collect(kT0 + absl::Seconds(5));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_TRUE((*back)[0].timed_out);
  EXPECT_TRUE((*back)[0].still_held);
  EXPECT_EQ(consumer_->Import(grant.token()).status().code(), absl::StatusCode::kNotFound);
}

// Loans end one by one: a frame let go goes back while one still held and
// in time stays lent.
TEST_F(FrameLoansTest, EachLoanEndsOnItsOwn) {
  FrameLoans loans(client(), absl::Seconds(10));
  auto [first, first_grant] = LendNext(loans, kT0);
  auto [second, second_grant] = LendNext(loans, kT0);
  absl::StatusOr<Buffer> a = consumer_->Import(first_grant.token());
  absl::StatusOr<Buffer> b = consumer_->Import(second_grant.token());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(loans.Collect(kT0).ok());
  const uint64_t second_id = b->id();
  { Buffer gone = *std::move(b); }
  ASSERT_TRUE(consumer_->Release(second_id).ok());
  absl::StatusOr<std::vector<FrameLoans::Return>> back = loans.Collect(kT0 + absl::Seconds(1));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 1u);
  EXPECT_EQ((*back)[0].index, second.index);
  EXPECT_EQ(loans.size(), 1u);
  // The first one's grant still works for another import of it.
  absl::StatusOr<Buffer> again = consumer_->Import(first_grant.token());
  EXPECT_TRUE(again.ok()) << again.status();
}

// hallocd gone: the error, and the loan stays lent (no frame goes back
// with its grant perhaps still importable).
TEST(FrameLoansErrorTest, WithoutHallocdNothingGoesBack) {
  absl::StatusOr<std::unique_ptr<testing::TestDaemon>> gone = testing::TestDaemon::Start();
  ASSERT_TRUE(gone.ok()) << gone.status();
  absl::StatusOr<Client> client = (*gone)->Connect();
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<Buffer> b = client->Allocate(BlobDescriptor(4096));
  ASSERT_TRUE(b.ok()) << b.status();
  const absl::StatusOr<v1::Grant> g = client->Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
  ASSERT_TRUE(g.ok()) << g.status();
  FrameLoans loans(*client, absl::Seconds(1));
  Frame frame;
  frame.index = 1;
  frame.buffer = &*b;
  ASSERT_TRUE(loans.Lend(frame, kT0, [&] { return *g; }).ok());
  gone->reset();
  absl::StatusOr<std::vector<FrameLoans::Return>> back = loans.Collect(kT0 + absl::Seconds(5));
  EXPECT_FALSE(back.ok());
  EXPECT_EQ(loans.size(), 1u);
}

}  // namespace
}  // namespace halloc::camera
