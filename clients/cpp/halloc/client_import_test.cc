// libhalloc's Imports against a scripted fake daemon (fake_broker.h): an
// Import whose caller gave up must leave neither its fd open nor a hold
// nobody received (the client closes the one and gives the other back).
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <atomic>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace {

using testing::FakeBroker;
using testing::ImportReply;
using testing::Memfd;
using testing::OpenOn;
using testing::ReleaseReply;

// A gRPC Allocator whose Import delivers its fd on the broker socket only
// once the caller's deadline has passed, as a busy hallocd may.
class LateImport final : public v1::Allocator::Service {
 public:
  // Sends `memfd` (and closes it here).
  LateImport(FakeBroker* broker, UniqueFd memfd) : broker_(broker), memfd_(std::move(memfd)) {}
  grpc::Status Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                      v1::ImportResponse* resp) override {
    for (int i = 0; i < 500 && !ctx->IsCancelled(); ++i) absl::SleepFor(absl::Milliseconds(10));
    v1::BrokerFrame frame;
    frame.mutable_buffer()->set_buffer_id(42);
    frame.mutable_buffer()->set_call_id(req->call_id());
    broker_->Send(frame, {memfd_.get()});
    memfd_ = UniqueFd();
    resp->mutable_buffer()->set_id(42);
    return grpc::Status::OK;
  }

 private:
  FakeBroker* const broker_;
  UniqueFd memfd_;
};

// An Import that failed (its deadline passed) but whose fd came after all:
// the fd is closed when it arrives, not kept for a taker that never comes.
TEST(ClientImportTest, TheFdOfAnImportThatGaveUpIsClosedWhenItComes) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  LateImport service(&broker, std::move(memfd));  // then only the client's copy is left
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(300));  // the late fd is (about) queued now
  // The next call takes the late fd off the socket first.
  EXPECT_TRUE(c->Release(7).ok());
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Import's fd is still open in the client";
  server->Shutdown();
}

// On the broker an Import's reply and fd come in one record: one that comes
// after the caller gave up has its fd closed, and nothing is given back
// when the import did not make the session a holder (newly_held false: it
// held the buffer before).
TEST(ClientImportTest, ABrokerImportThatGaveUpClosesItsLateFdAndReleasesNothing) {
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  std::atomic<int> imports{0};
  FakeBroker broker(
      [&](int sock, const v1::BrokerRequest& req) {
        if (req.has_import_buffer()) {
          ++imports;
          absl::SleepFor(absl::Seconds(2));  // longer than the 1 s deadline
          FakeBroker::Reply(sock, ImportReply(req.request_id(), 42), {memfd.get()});
          memfd = UniqueFd();  // then only the client's copy is left
        } else if (req.has_release()) {
          FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
        }
      },
      /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(1500));  // the late reply is (about) queued now
  EXPECT_TRUE(c->Release(7).ok());           // takes it off the socket first
  // One more round trip: a give-back sent while Release(7) waited has
  // reached the broker by the time this is answered.
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_EQ(imports.load(), 1) << "the Import went on the broker socket";
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Import's fd is still open in the client";
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7, 8}))
      << "only the caller's own Releases";
}

// An answer without its fd is DATA_LOSS; the hold it made, if it made one,
// reached nobody and is given back.
TEST(ClientImportTest, ABrokerImportReplyWithoutItsFdIsDataLoss) {
  for (const bool newly_held : {false, true}) {
    SCOPED_TRACE(newly_held ? "newly held" : "held before");
    FakeBroker broker(
        [newly_held](int sock, const v1::BrokerRequest& req) {
          if (req.has_import_buffer()) {
            FakeBroker::Reply(sock, ImportReply(req.request_id(), 42, newly_held));
          }
          if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
        },
        /*broker_import=*/true);
    absl::StatusOr<Client> c = Client::Connect(broker.options());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(c->Release(8).ok());  // after any give-back it would have sent
    EXPECT_EQ(broker.released_ids(),
              newly_held ? (std::vector<uint64_t>{42, 8}) : (std::vector<uint64_t>{8}));
  }
}

// A fake whose first Import is answered `late` after it came (the caller's
// deadline is 1 s), with buffer 42 and `first_newly_held`; the next Imports
// at once, with buffer `next_buffer` (not newly held when it is 42: the
// first made the hold). Every answer carries a memfd.
FakeBroker::Answer LateFirstImport(std::atomic<int>& imports, absl::Duration late,
                                   bool first_newly_held, uint64_t next_buffer) {
  return [&imports, late, first_newly_held, next_buffer](int sock,
                                                         const v1::BrokerRequest& req) {
    if (req.has_import_buffer()) {
      UniqueFd fd = Memfd();
      if (imports++ == 0) {
        absl::SleepFor(late);
        FakeBroker::Reply(sock, ImportReply(req.request_id(), 42, first_newly_held), {fd.get()});
      } else {
        FakeBroker::Reply(sock, ImportReply(req.request_id(), next_buffer, next_buffer != 42),
                          {fd.get()});
      }
    } else if (req.has_release()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    }
  };
}

// An Import that gave up, whose late answer says it made the session a
// holder: nobody received that buffer, so its hold is given back (before,
// it stayed until a Release the client could not know to send, or the
// session's end).
TEST(ClientImportTest, ABrokerImportThatGaveUpGivesBackTheHoldItMade) {
  std::atomic<int> imports{0};
  FakeBroker broker(LateFirstImport(imports, absl::Seconds(2), true, 43),
                    /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  const int fds_before = testing::CountOpenFds();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(1500));  // the late reply is (about) queued now
  EXPECT_TRUE(c->Release(7).ok());           // takes it off the socket first
  EXPECT_TRUE(c->Release(8).ok());           // after the give-back
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7, 42, 8}));
  EXPECT_EQ(testing::CountOpenFds(), fds_before) << "the late fd was closed";
}

// The hold a given-up Import made is kept while another Import of the
// session is in flight, and that one brings the same buffer: the caller of
// the second holds it by that same hold, which a give-back would take away.
TEST(ClientImportTest, AHoldAnImportInFlightBringsIsNotGivenBack) {
  std::atomic<int> imports{0};
  FakeBroker broker(LateFirstImport(imports, absl::Milliseconds(1500), true, 42),
                    /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  // Sent while the first is still being answered; its answer comes after
  // the first's late one.
  absl::StatusOr<Buffer> again = c->Import("token");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), 42u);
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{8})) << "buffer 42 is the caller's";
}

// ... but given back once no Import is in flight when the one in flight
// brought another buffer.
TEST(ClientImportTest, AHoldIsGivenBackOnceNoImportIsInFlight) {
  std::atomic<int> imports{0};
  FakeBroker broker(LateFirstImport(imports, absl::Milliseconds(1500), true, 43),
                    /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::StatusOr<Buffer> other = c->Import("other");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->id(), 43u);
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{42, 8}));
}

}  // namespace
}  // namespace halloc
