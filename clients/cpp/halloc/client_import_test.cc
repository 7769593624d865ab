// libhalloc's Imports against a scripted fake daemon (fake_broker.h): an
// Import whose caller gave up must leave neither its fd open nor its
// reference on the session's hold (the client closes the one and gives the
// other back: ReleaseRequest.import_references).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
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
    frame.mutable_buffer()->set_hold_generation(9);
    broker_->Send(frame, {memfd_.get()});
    memfd_ = UniqueFd();
    sent_.Notify();
    resp->mutable_buffer()->set_id(42);
    resp->set_hold_generation(9);
    return grpc::Status::OK;
  }
  // Once the fd is in the broker socket.
  bool WaitSent() { return sent_.WaitForNotificationWithTimeout(absl::Seconds(10)); }

 private:
  FakeBroker* const broker_;
  UniqueFd memfd_;
  absl::Notification sent_;
};

// An Import that failed (its deadline passed) but whose fd came after all:
// the fd is closed when it arrives, not kept for a taker that never comes,
// and the reference the import is on the session's hold goes back with it
// (hallocd sent it: the import was delivered; one that sees the caller gave
// up sends no fd and imports nothing).
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
  ASSERT_TRUE(service.WaitSent()) << "the late fd was never sent";
  // The next call takes the late fd off the socket first; one more round
  // trip after the give-back it sent.
  EXPECT_TRUE(c->Release(7).ok());
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Import's fd is still open in the client";
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9})
      << "the fd's hold generation names the hold its reference is on";
  server->Shutdown();
}

// A gRPC Allocator whose Import is answered at once but whose fd goes on
// the broker socket only once the test says (Send()).
class AnsweredBeforeItsFd final : public v1::Allocator::Service {
 public:
  AnsweredBeforeItsFd(FakeBroker* broker, UniqueFd memfd)
      : broker_(broker), memfd_(std::move(memfd)) {}
  ~AnsweredBeforeItsFd() override {
    if (!go_.HasBeenNotified()) go_.Notify();
    if (sender_.joinable()) sender_.join();
  }
  void Send() { go_.Notify(); }
  grpc::Status Import(grpc::ServerContext*, const v1::ImportRequest* req,
                      v1::ImportResponse* resp) override {
    sender_ = std::thread([this, call = req->call_id()] {
      go_.WaitForNotification();
      v1::BrokerFrame frame;
      frame.mutable_buffer()->set_buffer_id(42);
      frame.mutable_buffer()->set_call_id(call);
      frame.mutable_buffer()->set_hold_generation(9);
      broker_->Send(frame, {memfd_.get()});
      memfd_ = UniqueFd();
      sent_.Notify();
    });
    resp->mutable_buffer()->set_id(42);
    resp->mutable_buffer()->set_size(4096);
    resp->set_hold_generation(9);
    return grpc::Status::OK;
  }
  // Once the fd is in the broker socket.
  bool WaitSent() { return sent_.WaitForNotificationWithTimeout(absl::Seconds(10)); }

 private:
  FakeBroker* const broker_;
  UniqueFd memfd_;
  std::thread sender_;
  absl::Notification go_, sent_;
};

// The fd of an Import whose wait for it ended came later still: it was
// filed for a taker that never came, open until a record came twice the
// timeout later. Now closed as it comes.
TEST(ClientImportTest, AnFdThatComesAfterItsWaitEndedIsClosedAsItComes) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  AnsweredBeforeItsFd service(&broker, std::move(memfd));
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  service.Send();  // after the wait for it ended
  ASSERT_TRUE(service.WaitSent()) << "the fd was never sent";
  EXPECT_TRUE(c->Release(7).ok());  // takes it off the socket first
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the fd that came late is still open in the client";
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7})) << "the hold is not dropped whole";
  // Its reply came (hallocd delivered it): its reference went back once,
  // when the wait ended, not again with the fd.
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
  server->Shutdown();
}

// On the broker an Import's reply and fd come in one record: one that comes
// after the caller gave up has its fd closed, and gives back the one
// reference the import is on the session's hold (ImportResponse: held
// before or not, that reference alone goes); nothing is released whole.
// The give-back names the import's hold (ImportResponse.hold_generation),
// where hallocd takes that. An older hallocd, which counts no references,
// is sent nothing: its Release would drop the whole hold.
TEST(ClientImportTest, ABrokerImportThatGaveUpClosesItsLateFdAndGivesBackItsReference) {
  struct Hallocd {
    bool counted, generations;
  };
  for (const Hallocd h : {Hallocd{true, true}, Hallocd{true, false}, Hallocd{false, false}}) {
    const bool counted = h.counted;
    SCOPED_TRACE(!counted        ? "an older hallocd"
                 : h.generations ? "hallocd counts import references and takes generations"
                                 : "hallocd counts import references, takes no generations");
    struct stat memfd_stat {};
    UniqueFd memfd = Memfd();
    ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
    std::atomic<int> imports{0};
    FakeBroker broker(
        [&](int sock, const v1::BrokerRequest& req) {
          if (req.has_import_buffer()) {
            ++imports;
            absl::SleepFor(absl::Seconds(2));  // longer than the 1 s deadline
            FakeBroker::Reply(sock, ImportReply(req.request_id(), 42, false, 9), {memfd.get()});
            memfd = UniqueFd();  // then only the client's copy is left
          } else if (req.has_release()) {
            FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
          }
        },
        /*broker_import=*/true);
    broker.set_import_references(counted);
    broker.set_hold_generations(h.generations);
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
        << "only the caller's own Releases drop holds";
    EXPECT_EQ(broker.given_back_references(),
              counted ? std::vector<uint64_t>{42} : std::vector<uint64_t>{});
    EXPECT_EQ(broker.given_back_generations(),
              h.generations ? std::vector<uint64_t>{9} : std::vector<uint64_t>{});
  }
}

// An answer without its fd is DATA_LOSS; the reference the import made
// reached nobody and is given back, whether or not it made the hold.
TEST(ClientImportTest, ABrokerImportReplyWithoutItsFdIsDataLoss) {
  for (const bool newly_held : {false, true}) {
    SCOPED_TRACE(newly_held ? "newly held" : "held before");
    FakeBroker broker(
        [newly_held](int sock, const v1::BrokerRequest& req) {
          if (req.has_import_buffer()) {
            FakeBroker::Reply(sock, ImportReply(req.request_id(), 42, newly_held, 9));
          }
          if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
        },
        /*broker_import=*/true);
    absl::StatusOr<Client> c = Client::Connect(broker.options());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(c->Release(8).ok());  // after any give-back it would have sent
    EXPECT_EQ(broker.released_ids(), std::vector<uint64_t>{8});
    EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
    EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
  }
}

// The first Import is answered 1.5 s after it came (the caller's deadline
// is 1 s), with buffer 42 (making the hold); the next at once, with 42 too
// (held already). Every answer carries a memfd.
FakeBroker::Answer LateFirstImport(std::atomic<int>& imports) {
  return [&imports](int sock, const v1::BrokerRequest& req) {
    if (req.has_import_buffer()) {
      UniqueFd fd = Memfd();
      const bool first = imports++ == 0;
      if (first) absl::SleepFor(absl::Milliseconds(1500));
      FakeBroker::Reply(sock, ImportReply(req.request_id(), 42, first, 9), {fd.get()});
    } else if (req.has_release()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    }
  };
}

// A given-up Import made the session's hold, and another Import in flight
// brings the same buffer: the first's reference goes back at once (before,
// nothing went back until no import was in flight, so a client importing
// without pause kept such holds until its session ended); the second's
// caller holds the buffer by its own reference, which is not touched.
TEST(ClientImportTest, AGivenUpImportGivesBackItsReferenceWhileAnotherIsInFlight) {
  std::atomic<int> imports{0};
  FakeBroker broker(LateFirstImport(imports), /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  const int fds_before = testing::CountOpenFds();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  // Sent while the first is still being answered; its answer comes after
  // the first's late one.
  absl::StatusOr<Buffer> again = c->Import("token");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), 42u);
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_EQ(broker.released_ids(), std::vector<uint64_t>{8}) << "42's hold is the caller's";
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
  again = absl::CancelledError("closed");
  EXPECT_EQ(testing::CountOpenFds(), fds_before) << "the late fd was closed";
}

// gRPC Imports of buffer 42, its fd sent on the broker socket ahead of the
// reply; the `cut_at`th is answered while this process has no fd number
// free, so the kernel cuts its fd (MSG_CTRUNC). `newly_held`: what the
// reply says of the hold that import made.
class CutImports final : public v1::Allocator::Service {
 public:
  CutImports(testing::FakeBroker* broker, int cut_at, bool newly_held)
      : broker_(broker), cut_at_(cut_at), newly_held_(newly_held) {}
  grpc::Status Import(grpc::ServerContext*, const v1::ImportRequest* req,
                      v1::ImportResponse* resp) override {
    const int call = ++calls_;
    UniqueFd fd = Memfd();
    v1::BrokerFrame frame;
    frame.mutable_buffer()->set_buffer_id(42);
    frame.mutable_buffer()->set_call_id(req->call_id());
    broker_->Send(frame, {fd.get()});  // in flight, in the socket
    fd.reset();
    if (call == cut_at_) {
      const int lowest = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      ::close(lowest);
      ::getrlimit(RLIMIT_NOFILE, &saved_);
      rlimit low = saved_;
      low.rlim_cur = static_cast<rlim_t>(lowest);
      ::setrlimit(RLIMIT_NOFILE, &low);
    }
    resp->mutable_buffer()->set_id(42);
    resp->mutable_buffer()->set_size(4096);
    resp->set_newly_held(call == cut_at_ && newly_held_);
    resp->set_hold_generation(9);
    return grpc::Status::OK;
  }
  // The fd limit as it was (once the cut import's frame has been read).
  void Restore() {
    if (calls_ >= cut_at_) ::setrlimit(RLIMIT_NOFILE, &saved_);
  }

 private:
  testing::FakeBroker* const broker_;
  const int cut_at_;
  const bool newly_held_;
  std::atomic<int> calls_{0};
  rlimit saved_{};
};

// A gRPC Import whose fd the kernel cut gives back its own reference, not
// the hold: buffer 42, imported first whole, stays held for the first
// Buffer (a plain Release would have taken the hold it uses), and a hold
// the cut import made itself goes with that reference.
TEST(ClientImportTest, ACutGrpcImportGivesBackItsReference) {
  for (const bool newly_held : {false, true}) {
    SCOPED_TRACE(newly_held ? "the cut import made the hold" : "the session held 42 already");
    // Import over gRPC (this fake serves no Import on the socket);
    // Release on the broker.
    FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
      if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    });
    CutImports service(&broker, newly_held ? 1 : 2, newly_held);
    std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
    ASSERT_NE(server, nullptr);
    absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(2)));
    ASSERT_TRUE(c.ok()) << c.status();
    // The channel up first (gRPC opens fds on its first call).
    EXPECT_EQ(c->Stats().status().code(), absl::StatusCode::kUnimplemented);
    absl::StatusOr<Buffer> first;
    if (!newly_held) {
      first = c->Import("token");
      ASSERT_TRUE(first.ok()) << first.status();  // the session holds 42, in use
    }
    absl::StatusOr<Buffer> cut = c->Import("token");
    service.Restore();
    EXPECT_EQ(cut.status().code(), absl::StatusCode::kResourceExhausted) << cut.status();
    EXPECT_TRUE(c->Release(7).ok());  // a round trip after any give-back
    EXPECT_EQ(broker.released_ids(), std::vector<uint64_t>{7});
    EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
    EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
    server->Shutdown();
  }
}

// Two gRPC Imports of buffer 42: the first is served first and makes the
// session's hold, but its fd never comes; the second, served after it, is
// received and ends first. The first's end gives back its own reference,
// not the hold the second's Buffer uses. (Before references, the hold
// itself was given back.)
TEST(ClientImportTest, AnImportWhoseFdNeverCameGivesBackOnlyItsReference) {
  class TwoImports final : public v1::Allocator::Service {
   public:
    explicit TwoImports(FakeBroker* broker) : broker_(broker) {}
    grpc::Status Import(grpc::ServerContext*, const v1::ImportRequest* req,
                        v1::ImportResponse* resp) override {
      const bool first = ++calls == 1;
      if (!first) {
        UniqueFd fd = Memfd();
        v1::BrokerFrame frame;
        frame.mutable_buffer()->set_buffer_id(42);
        frame.mutable_buffer()->set_call_id(req->call_id());
        broker_->Send(frame, {fd.get()});
      }
      resp->mutable_buffer()->set_id(42);
      resp->mutable_buffer()->set_size(4096);
      resp->set_newly_held(first);
      resp->set_hold_generation(9);
      return grpc::Status::OK;
    }
    std::atomic<int> calls{0};

   private:
    FakeBroker* const broker_;
  };
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  TwoImports service(&broker);
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  // The first import waits this out for its fd; the rest must be answered
  // within it, on a loaded machine too (the ASan run).
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(3)));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<Buffer> first;
  std::thread importing([&] { first = c->Import("token"); });
  while (service.calls < 1) absl::SleepFor(absl::Milliseconds(1));
  absl::StatusOr<Buffer> second = c->Import("token");
  ASSERT_TRUE(second.ok()) << second.status();
  importing.join();
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDeadlineExceeded) << first.status();
  EXPECT_TRUE(c->Release(7).ok());  // a round trip after any give-back
  EXPECT_EQ(broker.released_ids(), std::vector<uint64_t>{7})
      << "the hold `second` uses was given back";
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
  server->Shutdown();
}

// A gRPC Import whose fd came (another call read it off the socket) before
// the call gave up: the fd is closed then, and its reference goes back
// naming the hold its BufferFd said (the gRPC reply never came).
TEST(ClientImportTest, AGivenUpImportWhoseFdCameFirstNamesItsHold) {
  class FdFirst final : public v1::Allocator::Service {
   public:
    explicit FdFirst(FakeBroker* broker) : broker_(broker) {}
    grpc::Status Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                        v1::ImportResponse*) override {
      UniqueFd fd = Memfd();
      v1::BrokerFrame frame;
      frame.mutable_buffer()->set_buffer_id(42);
      frame.mutable_buffer()->set_call_id(req->call_id());
      frame.mutable_buffer()->set_hold_generation(9);
      broker_->Send(frame, {fd.get()});
      sent.Notify();
      for (int i = 0; i < 500 && !ctx->IsCancelled(); ++i) absl::SleepFor(absl::Milliseconds(10));
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "late");
    }
    absl::Notification sent;

   private:
    FakeBroker* const broker_;
  };
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  FdFirst service(&broker);
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(2)));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<Buffer> imported;
  std::thread importing([&] { imported = c->Import("token"); });
  ASSERT_TRUE(service.sent.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(c->Release(7).ok());  // reads the fd off the socket, for the Import
  importing.join();
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kDeadlineExceeded) << imported.status();
  EXPECT_TRUE(c->Release(8).ok());  // a round trip after the give-back
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{42});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{9});
  server->Shutdown();
}

// A reply no call waits for (an id nobody asked with, or a second reply to
// one) has its fds closed at once. Before, it was filed for good: its fds
// stayed open until the Client closed. Its buffers are not given back (a
// repeated reply names buffers the session holds and uses).
TEST(ClientImportTest, AReplyNoCallWaitsForHasItsFdsClosed) {
  struct stat st {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &st), 0);
  int raw = memfd.release();
  FakeBroker broker([&raw](int sock, const v1::BrokerRequest& req) {
    if (!req.has_release()) return;
    if (raw >= 0) {
      FakeBroker::Reply(sock, testing::AllocateReply(req.request_id() + 1000, {55}), {raw});
      ::close(raw);
      raw = -1;
    }
    FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    FakeBroker::Reply(sock, ReleaseReply(req.request_id()));  // and again
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Release(7).ok());
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_TRUE(c->Release(9).ok());
  EXPECT_FALSE(OpenOn(st)) << "the unasked reply's fd is still open in the client";
  EXPECT_EQ(broker.released_ids(), (std::vector<uint64_t>{7, 8, 9}));
}

// An Import never answered holds back no other's give-back (before
// references, every give-back waited until no import was in flight, and
// one never answered held them back for twice the timeout).
TEST(ClientImportTest, AnImportNeverAnsweredHoldsBackNoGiveBack) {
  std::atomic<int> imports{0};
  FakeBroker broker(
      [&imports](int sock, const v1::BrokerRequest& req) {
        // The first Import is never answered; the next one's answer says
        // it made a hold of 43 but brings no fd (DATA_LOSS to its caller).
        if (req.has_import_buffer() && imports++ > 0) {
          FakeBroker::Reply(sock, ImportReply(req.request_id(), 43, /*newly_held=*/true, 5));
        }
        if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
      },
      /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Milliseconds(500)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("never").status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(c->Import("cut").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(c->Release(7).ok());  // a round trip after the give-back
  EXPECT_EQ(broker.given_back_references(), std::vector<uint64_t>{43});
  EXPECT_EQ(broker.given_back_generations(), std::vector<uint64_t>{5});
  EXPECT_EQ(broker.released_ids(), std::vector<uint64_t>{7});
}

}  // namespace
}  // namespace halloc
