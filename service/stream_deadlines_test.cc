// StreamDeadlines on its own, over an in-process channel: a test service
// whose handler blocks in Read() under a watched deadline, as hallocd's
// ReleaseMany and reflection handlers do. What a client sees when its
// stream outstays (the watcher's status, not CANCELLED), that Set moves a
// deadline either way, that Stop and Set tell the handler its call was
// cut, and that a call whose handler has returned is never touched again
// (under ASan a cancel of an ended call is a use after free).
#include "service/stream_deadlines.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "service/util/clock.h"

namespace halloc {
namespace {

namespace v1alpha = grpc::reflection::v1alpha;
using Request = v1alpha::ServerReflectionRequest;
using Response = v1alpha::ServerReflectionResponse;

constexpr absl::string_view kCutMessage = "stream outstayed its time";

// What one handler saw of its Deadline, in order: each Set's result, then
// Stop's (absent when the handler returned without stopping it).
struct Seen {
  std::vector<bool> set;
  std::optional<bool> stopped;
};

// Each stream is watched from its start, `first` ahead. A request's host
// field says what the handler does with it before it answers:
//   "idle <ms>"  Set the deadline that far from now;
//   "return"     return at once, the Deadline destroyed, not stopped;
//   anything else: only answer.
// Once Read() fails the handler Sets the deadline once more (as a
// handler that has not noticed the cut would) and Stops it.
class WatchedService final : public v1alpha::ServerReflection::Service {
 public:
  WatchedService(StreamDeadlines* deadlines, absl::Duration first)
      : deadlines_(deadlines), first_(first) {}

  grpc::Status ServerReflectionInfo(grpc::ServerContext* ctx,
                                    grpc::ServerReaderWriter<Response, Request>* stream) override {
    StreamDeadlines::Deadline deadline =
        deadlines_->Watch(ctx, MonotonicNow() + first_, grpc::StatusCode::DEADLINE_EXCEEDED,
                          std::string(kCutMessage));
    Seen seen;
    Request req;
    while (stream->Read(&req)) {
      absl::string_view what = req.host();
      if (what == "return") {
        Finish(std::move(seen));
        return grpc::Status::OK;
      }
      int ms = 0;
      if (absl::ConsumePrefix(&what, "idle ") && absl::SimpleAtoi(what, &ms)) {
        seen.set.push_back(deadline.Set(MonotonicNow() + absl::Milliseconds(ms)));
      }
      Response resp;
      resp.set_valid_host(req.host());
      if (!stream->Write(resp)) break;
    }
    seen.set.push_back(deadline.Set(MonotonicNow() + absl::Hours(1)));
    seen.stopped = deadline.Stop();
    Finish(std::move(seen));
    return grpc::Status::OK;
  }

  // What the handlers saw, once `n` of them have returned.
  std::vector<Seen> WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return seen_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(30));
    return seen_;
  }

 private:
  void Finish(Seen seen) {
    absl::MutexLock lock(&mu_);
    seen_.push_back(std::move(seen));
  }

  StreamDeadlines* deadlines_;
  const absl::Duration first_;
  absl::Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

class StreamDeadlinesTest : public ::testing::Test {
 protected:
  // A server whose streams are watched `first` ahead from their start.
  void Start(absl::Duration first) {
    service_ = std::make_unique<WatchedService>(&deadlines_, first);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = v1alpha::ServerReflection::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<Request, Response>> rw;
  };
  std::unique_ptr<Stream> Open() {
    auto s = std::make_unique<Stream>();
    s->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    s->rw = stub_->ServerReflectionInfo(&s->ctx);
    return s;
  }
  // Sends `what` and reads its answer; false when the stream has ended.
  static bool Ask(Stream& s, const std::string& what) {
    Request req;
    req.set_host(what);
    Response resp;
    return s.rw->Write(req) && s.rw->Read(&resp) && resp.valid_host() == what;
  }

  StreamDeadlines deadlines_;
  std::unique_ptr<WatchedService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1alpha::ServerReflection::Stub> stub_;
};

TEST_F(StreamDeadlinesTest, AStreamThatOutstaysIsEndedWithTheWatchersStatus) {
  Start(absl::Milliseconds(200));
  std::unique_ptr<Stream> s = Open();
  // Asks nothing: the handler waits in Read() until it is cut.
  Response resp;
  EXPECT_FALSE(s->rw->Read(&resp));
  const grpc::Status status = s->rw->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(status.error_message(), kCutMessage);
  const std::vector<Seen> seen = service_->WaitFor(1);
  ASSERT_EQ(seen.size(), 1u);
  // The handler learns it was cut: a Set after the cut and the Stop say so.
  EXPECT_EQ(seen[0].set, std::vector<bool>{false});
  EXPECT_EQ(seen[0].stopped, std::optional<bool>(false));
}

TEST_F(StreamDeadlinesTest, AStreamThatEndsInTimeIsNotCut) {
  Start(absl::Seconds(30));
  std::unique_ptr<Stream> s = Open();
  ASSERT_TRUE(Ask(*s, "hello"));
  ASSERT_TRUE(Ask(*s, "again"));
  s->rw->WritesDone();
  EXPECT_TRUE(s->rw->Finish().ok());
  const std::vector<Seen> seen = service_->WaitFor(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].set, std::vector<bool>{true});
  EXPECT_EQ(seen[0].stopped, std::optional<bool>(true));
}

TEST_F(StreamDeadlinesTest, ASoonerDeadlineWakesTheWatcher) {
  // Watched an hour ahead; the first request brings it to 1 s from then
  // (time for its answer on a loaded machine). The watcher sleeps towards the hour and
  // must wake for the sooner time.
  Start(absl::Hours(1));
  std::unique_ptr<Stream> s = Open();
  const absl::Time asked = absl::Now();
  ASSERT_TRUE(Ask(*s, "idle 1000"));
  Response resp;
  EXPECT_FALSE(s->rw->Read(&resp));
  EXPECT_EQ(s->rw->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(30));
  const std::vector<Seen> seen = service_->WaitFor(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].set, (std::vector<bool>{true, false}));
}

TEST_F(StreamDeadlinesTest, ALaterDeadlineOutlivesTheFirst) {
  // Watched 2 s ahead; the first request moves it an hour on. The watcher
  // still wakes at 2 s, finds nothing due, and leaves it.
  Start(absl::Seconds(2));
  std::unique_ptr<Stream> s = Open();
  ASSERT_TRUE(Ask(*s, "idle 3600000"));
  absl::SleepFor(absl::Seconds(3));
  EXPECT_TRUE(Ask(*s, "still here"));
  s->rw->WritesDone();
  EXPECT_TRUE(s->rw->Finish().ok());
  const std::vector<Seen> seen = service_->WaitFor(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].set, (std::vector<bool>{true, true}));
  EXPECT_EQ(seen[0].stopped, std::optional<bool>(true));
}

TEST_F(StreamDeadlinesTest, OnlyTheStreamThatOutstaysIsCut) {
  Start(absl::Seconds(30));
  std::unique_ptr<Stream> quick = Open();
  std::unique_ptr<Stream> slow = Open();
  ASSERT_TRUE(Ask(*slow, "idle 1000"));
  ASSERT_TRUE(Ask(*quick, "hello"));
  Response resp;
  EXPECT_FALSE(slow->rw->Read(&resp));
  EXPECT_EQ(slow->rw->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The other stream, watched too, goes on.
  EXPECT_TRUE(Ask(*quick, "after the cut"));
  quick->rw->WritesDone();
  EXPECT_TRUE(quick->rw->Finish().ok());
  const std::vector<Seen> seen = service_->WaitFor(2);
  ASSERT_EQ(seen.size(), 2u);
  // One cut, one in time (in either order: the cut handler's wake-up may
  // come after the other's end).
  EXPECT_NE(seen[0].stopped, seen[1].stopped);
  EXPECT_TRUE(seen[0].stopped.has_value() && seen[1].stopped.has_value());
}

TEST_F(StreamDeadlinesTest, ADeadlineDestroyedWithItsHandlerIsNotWatched) {
  // The handler returns without stopping its Deadline, well before it is
  // due: the watcher must never reach the ended call.
  Start(absl::Seconds(2));
  std::unique_ptr<Stream> s = Open();
  Request req;
  req.set_host("return");
  ASSERT_TRUE(s->rw->Write(req));
  s->rw->WritesDone();
  EXPECT_TRUE(s->rw->Finish().ok());
  ASSERT_EQ(service_->WaitFor(1).size(), 1u);
  absl::SleepFor(absl::Seconds(3));  // past the deadline, the call gone
  // Still serving: a new stream is watched and ends in time.
  std::unique_ptr<Stream> next = Open();
  EXPECT_TRUE(Ask(*next, "hello"));
  next->rw->WritesDone();
  EXPECT_TRUE(next->rw->Finish().ok());
}

TEST(StreamDeadlinesMoveTest, AMovedDeadlineIsStoppedOnceByItsNewOwner) {
  StreamDeadlines deadlines;
  grpc::ServerContext ctx;  // never cancelled: the deadline is far off
  StreamDeadlines::Deadline first = deadlines.Watch(&ctx, MonotonicNow() + absl::Hours(1),
                                                    grpc::StatusCode::DEADLINE_EXCEEDED, "never");
  StreamDeadlines::Deadline second = std::move(first);
  // The moved-from one watches nothing: its calls do nothing.
  EXPECT_TRUE(first.Set(MonotonicNow()));  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(first.Stop());
  EXPECT_TRUE(second.Set(MonotonicNow() + absl::Hours(2)));
  EXPECT_TRUE(second.Stop());
  EXPECT_TRUE(second.Stop());  // stopped already: nothing left to stop
}

}  // namespace
}  // namespace halloc
