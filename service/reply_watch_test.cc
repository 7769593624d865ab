// ReplyWatch on a server built as hallocd builds its control server
// (ApplyGrpcLimits), with raw HTTP/2 clients that never read a reply.
#include "service/reply_watch.h"

#include <fcntl.h>
#include <grpcpp/create_channel_posix.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "service/backend/memfd_backend.h"
#include "service/daemon.h"
#include "service/grpc_service.h"
#include "service/http2_testing.h"

namespace halloc {
namespace {

bool WriteAll(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += n;
  }
  return true;
}

using http2_testing::EmptyCall;
using http2_testing::Frame;
using http2_testing::kAck;
using http2_testing::kEndStream;
using http2_testing::kHeaders;
using http2_testing::kPing;
using http2_testing::kPreface;
using http2_testing::kRstStream;
using http2_testing::kSettings;

// A client that opens no window for replies (SETTINGS_INITIAL_WINDOW_SIZE
// 0), sends `calls` Stats calls (no session needed) and reads only to
// answer the server and to see which of its calls the server ended;
// `reopen`: it opens a new such call for each one ended (a flood).
class NonReader {
 public:
  NonReader(grpc::Server* server, ControlPeers& peers, uid_t uid, int calls, bool reopen = false)
      : reopen_(reopen), next_id_(1 + 2 * calls) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    server_fd_ = sv[0];
    ours_.reset(sv[1]);
    EXPECT_EQ(::fcntl(ours_.get(), F_SETFL, 0), 0);
    peers.Set(sv[0], ucred{1, uid, uid});
    grpc::AddInsecureChannelFromFd(server, sv[0]);  // as GrpcListener hands them over
    std::string out = kPreface;
    out += Frame(kSettings, 0, 0, std::string("\x00\x04\x00\x00\x00\x00", 6));
    for (int i = 0; i < calls; ++i) out += EmptyCall("/halloc.v1.Allocator/Stats", 1 + 2 * i);
    EXPECT_TRUE(WriteAll(ours_.get(), out)) << std::strerror(errno);
    // Only then the reader, whose acknowledgements must not land inside
    // those frames (its first one did now and then, and gRPC ended the
    // connection for a garbled frame).
    reader_ = std::thread([this] { Read(); });
  }
  ~NonReader() {
    ::shutdown(ours_.get(), SHUT_RDWR);
    reader_.join();
  }
  // The number of the server's end (gRPC's "fd:N").
  int server_fd() const { return server_fd_; }
  // Calls opened again (`reopen`).
  int reopened() const { return reopened_.load(); }
  // Calls the server ended (reset, or trailers without a reply).
  int ended() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(ended_.size());
  }
  bool WaitEnded(int n, absl::Duration within) const {
    absl::MutexLock lock(&mu_);
    auto done = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(ended_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), within);
  }

 private:
  void Read() {
    std::string buf;
    char chunk[4096];
    for (;;) {
      const ssize_t n = ::read(ours_.get(), chunk, sizeof(chunk));
      if (n <= 0) return;
      buf.append(chunk, n);
      while (buf.size() >= 9) {
        const uint32_t len = (uint8_t(buf[0]) << 16) | (uint8_t(buf[1]) << 8) | uint8_t(buf[2]);
        if (buf.size() < 9 + len) break;
        const uint8_t type = buf[3], flags = buf[4];
        const uint32_t stream = ((uint8_t(buf[5]) & 0x7f) << 24) | (uint8_t(buf[6]) << 16) |
                                (uint8_t(buf[7]) << 8) | uint8_t(buf[8]);
        if (type == kSettings && !(flags & kAck)) WriteAll(ours_.get(), Frame(kSettings, kAck, 0, ""));
        if (type == kPing && !(flags & kAck)) {
          WriteAll(ours_.get(), Frame(kPing, kAck, 0, buf.substr(9, 8)));
        }
        if (type == kRstStream || (type == kHeaders && (flags & kEndStream))) {
          absl::MutexLock lock(&mu_);
          if (ended_.insert(stream).second && reopen_) {
            WriteAll(ours_.get(), EmptyCall("/halloc.v1.Allocator/Stats", next_id_));
            next_id_ += 2;
            ++reopened_;
          }
        }
        buf.erase(0, 9 + len);
      }
    }
  }

  const bool reopen_;
  int server_fd_ = -1;
  uint32_t next_id_;  // the reader's, once the constructor is done
  UniqueFd ours_;
  std::thread reader_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<uint32_t> ended_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> reopened_{0};
};

class ReplyWatchTest : public ::testing::Test {
 protected:
  // `calls_per_uid`: > 0, hallocd's per-uid bound on calls in flight
  // (CallsPerUid) too.
  void Start(ReplyWatch::Options replies, int calls_per_uid = 0) {
    options_.grpc_replies = replies;
    watch_ = std::make_unique<ReplyWatch>(replies, peers_);
    if (calls_per_uid > 0) calls_ = std::make_unique<CallsPerUid>(calls_per_uid, peers_);
    service_ = std::make_unique<AllocatorService>(&core_, peers_, nullptr, calls_.get());
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    ApplyGrpcLimits(options_, watch_.get(), calls_.get(), builder);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // A Stats call from `uid` on a connection of its own; `number`: the
  // server's end of it gets that fd number (one gRPC closed).
  grpc::Status Stats(uid_t uid, std::optional<int> number = std::nullopt) {
    int sv[2];
    {
      // gRPC closes these fds where ThreadSanitizer does not look (its
      // library's calls are not checked: tsan.supp), so a number it reuses
      // reads to TSan as two threads making one fd at once. Made one at a
      // time, the makings are ordered.
      static absl::Mutex making;
      absl::MutexLock lock(&making);
      EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
      if (number && sv[0] != *number) {
        // Free still (the lowest, socketpair's first end takes it unless
        // something took it meanwhile)?
        const bool free = ::fcntl(*number, F_GETFD) == -1 && errno == EBADF;
        if (!free || ::dup3(sv[0], *number, O_CLOEXEC) != *number) {
          ::close(sv[0]);
          ::close(sv[1]);
          return grpc::Status(grpc::StatusCode::ABORTED, "fd number taken");
        }
        ::close(sv[0]);
        sv[0] = *number;
      }
    }
    peers_->Set(sv[0], ucred{1, uid, uid});
    grpc::AddInsecureChannelFromFd(server_.get(), sv[0]);
    auto stub = v1::Allocator::NewStub(grpc::CreateInsecureChannelFromFd("hallocd", sv[1]));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::StatsResponse stats;
    return stub->Stats(&ctx, v1::StatsRequest(), &stats);
  }

  Allocator core_{std::make_unique<MemfdBackend>(), Limits()};
  std::shared_ptr<ControlPeers> peers_ = std::make_shared<ControlPeers>();
  std::unique_ptr<CallsPerUid> calls_;
  std::unique_ptr<AllocatorService> service_;
  DaemonOptions options_;  // hallocd's own gRPC limits: 32 threads
  std::unique_ptr<ReplyWatch> watch_;
  std::unique_ptr<grpc::Server> server_;
};

// Before, the 32 calls held all 32 threads for as long as the connection
// stayed open, and the other user's call was refused ("Server Threadpool
// Exhausted").
TEST_F(ReplyWatchTest, UnreadRepliesHoldFewThreadsAndThoseNotForLong) {
  ReplyWatch::Options replies;
  // Long enough that the uid's own 8 still wait when the rest have been
  // cancelled, even under ThreadSanitizer (making the 32 calls took it over
  // a second) and the rest took a loaded machine up to their 4 s.
  replies.timeout = absl::Seconds(10);
  replies.per_uid = 8;
  Start(replies);
  const int calls = options_.grpc_max_threads;
  NonReader attacker(server_.get(), *peers_, 1001, calls);
  // Past the uid's 8, each is cancelled once it has waited stuck_after.
  EXPECT_TRUE(attacker.WaitEnded(calls - replies.per_uid, absl::Seconds(4)))
      << attacker.ended() << " of " << calls << " unread calls ended";
  EXPECT_LE(attacker.ended(), calls - replies.per_uid) << "the uid's own 8 were cut short";
  const grpc::Status honest = Stats(1002);
  EXPECT_TRUE(honest.ok()) << "another user's call while uid 1001 has " << calls
                           << " unread replies: " << honest.error_code() << " "
                           << honest.error_message();
  // And the 8 go once they have waited `timeout`.
  EXPECT_TRUE(attacker.WaitEnded(calls, absl::Seconds(15)))
      << attacker.ended() << " of " << calls << " unread calls ended";
  // All but those gRPC refused itself ("Server Threadpool Exhausted": the
  // 32 threads include its pollers), which hold no thread.
  EXPECT_GE(watch_->cancelled(), static_cast<uint64_t>(calls - 2));
  EXPECT_LE(watch_->cancelled(), static_cast<uint64_t>(calls));
  EXPECT_EQ(watch_->waiting(), 0);
}

// One uid may have CallsPerUid's limit of calls in flight, all its
// connections together; each call past it is refused at once
// (RESOURCE_EXHAUSTED, trailers only: it needs no window, so it holds no
// thread), and other users are served. Before, nothing bounded one uid's
// share of the 32 threads: ordinary fast calls, or unread ones on new
// connections, took them all (helper-100: 32 of 40 honest calls refused).
TEST_F(ReplyWatchTest, OneUidHasAtMostItsLimitOfCallsInFlight) {
  ReplyWatch::Options replies;
  replies.timeout = absl::Seconds(20);  // the admitted ones stay in flight throughout
  constexpr int kPerUid = 4;
  Start(replies, kPerUid);
  const int calls = options_.grpc_max_threads;
  NonReader attacker(server_.get(), *peers_, 1001, calls);
  EXPECT_TRUE(attacker.WaitEnded(calls - kPerUid, absl::Seconds(5)))
      << attacker.ended() << " of " << calls << " calls ended";
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (calls_->in_flight(1001) < kPerUid && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(calls_->in_flight(1001), kPerUid);
  EXPECT_EQ(attacker.ended(), calls - kPerUid) << "an admitted call ended (its reply is unread)";
  EXPECT_EQ(watch_->cancelled(), 0u) << "refused, not admitted and cancelled later";
  // A second connection of the same uid is held to the same limit.
  const grpc::Status more = Stats(1001);
  EXPECT_EQ(more.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << more.error_message();
  EXPECT_NE(more.error_message().find("calls in flight"), std::string::npos)
      << more.error_message();
  const grpc::Status honest = Stats(1002);
  EXPECT_TRUE(honest.ok()) << honest.error_code() << " " << honest.error_message();
  // The server ends the call (its interceptors go) just after the client
  // has its status: the count drops then, not at the client's return.
  const absl::Time ends_by = absl::Now() + absl::Seconds(5);
  while (calls_->in_flight(1002) != 0 && absl::Now() < ends_by) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(calls_->in_flight(1002), 0) << "an ended call is still counted";
}

// Honest clients read their replies at once: sixteen of one uid, calling
// as fast as they can, never count against it, so none is cancelled.
TEST_F(ReplyWatchTest, ManyCallsOfOneUidThatAreReadAreNeverCancelled) {
  ReplyWatch::Options replies;
  replies.per_uid = 1;
  Start(replies);
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (!Stats(1003).ok()) ++failed;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(watch_->cancelled(), 0u);
}

// Cancelled after stuck_after, each such call was replaced at once: the
// flood kept all 32 threads taken, and another uid's calls (the watchdog's
// Health/Check among them) were refused "Server Threadpool Exhausted"
// (20 of 20). A uid with a reply cancelled is now judged at once.
TEST_F(ReplyWatchTest, ASustainedFloodOfUnreadCallsLeavesOtherUsersServed) {
  Start(ReplyWatch::Options());  // hallocd's defaults: 5 s, 100 ms, 8 per uid
  auto attacker = std::make_unique<NonReader>(server_.get(), *peers_, 1001, 64, /*reopen=*/true);
  absl::SleepFor(absl::Milliseconds(500));
  int refused = 0;
  std::string last;
  constexpr int kCalls = 20;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status s = Stats(1002);
    if (!s.ok()) {
      ++refused;
      last = s.error_message();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GT(attacker->reopened(), 64) << "the flood went on";
  // Most get a thread: the flood's calls are cancelled as their replies
  // are handed over. (Some may still lose the race for a thread to calls
  // the flood opens as fast as they end: 0-4 of 20 here, 20 of 20 before;
  // the bound leaves a loaded machine room and still tells the two apart.)
  EXPECT_LE(refused, 3 * kCalls / 4)
      << refused << " of " << kCalls << " Stats calls of uid 1002 refused (" << last
      << ") while uid 1001 reopened " << attacker->reopened() << " unread calls";
  // The flood gone, uid 1001 (still judged at once) is served: only while
  // its stuck replies are at the limit are its new ones cancelled.
  attacker.reset();
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (watch_->waiting() > 0 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(Stats(1001).ok()) << "an honest call of the judged uid was refused";
}

// A connection is named by gRPC by its fd number, which the next
// connection handed over reuses: a judged connection's judgement passed to
// it, and an honest call of the uid on it was cancelled while another
// connection of that uid kept its limit of replies stuck.
TEST_F(ReplyWatchTest, AJudgedConnectionsNumberReusedByAnotherPassesNoJudgementOn) {
  ReplyWatch::Options replies;
  replies.timeout = absl::Seconds(20);  // the holder's replies stay stuck throughout
  Start(replies);
  // uid 1001 keeps its limit of replies stuck on one connection...
  NonReader holder(server_.get(), *peers_, 1001, replies.per_uid);
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (watch_->waiting() < replies.per_uid && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::SleepFor(2 * replies.stuck_after);  // counted as stuck
  // ...so the one reply it leaves unread on another is cancelled, and that
  // connection judged.
  auto judged = std::make_unique<NonReader>(server_.get(), *peers_, 1001, 1);
  ASSERT_TRUE(judged->WaitEnded(1, absl::Seconds(5))) << "its reply was never cancelled";
  EXPECT_EQ(holder.ended(), 0) << "the holder's replies were to stay";
  const int number = judged->server_fd();
  judged.reset();
  // gRPC closes the judged connection once it sees its end.
  bool closed = false;
  while (!closed && absl::Now() < until) {
    closed = ::fcntl(number, F_GETFD) == -1 && errno == EBADF;
    if (!closed) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(closed) << "gRPC kept fd " << number << " open";
  const grpc::Status honest = Stats(1001, number);
  ASSERT_NE(honest.error_code(), grpc::StatusCode::ABORTED)
      << "fd " << number << " was taken meanwhile";
  EXPECT_TRUE(honest.ok()) << "an honest call of uid 1001 on a new connection numbered " << number
                           << ": " << honest.error_code() << " " << honest.error_message();
  EXPECT_EQ(holder.ended(), 0);
}

}  // namespace
}  // namespace halloc
