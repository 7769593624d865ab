#include "service/unread_fds.h"

#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "gtest/gtest.h"
#include "service/fd_channel.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

// A connected pair: `daemon` is hallocd's end, `client` the peer's.
struct Pair {
  UniqueFd daemon, client;
};

Pair Connected() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// A record left unread on `p`'s client end, as a reply with fds would be.
void SendUnread(Pair& p) { ASSERT_TRUE(SendRecord(p.daemon.get(), "x", {}, false).ok()); }

// The client takes everything queued for it.
void ReadAll(Pair& p) {
  while (ReceiveRecord(p.client.get(), /*nonblocking=*/true).ok()) {
  }
}

// A clock the test moves.
struct FakeClock {
  absl::Time now = absl::UnixEpoch();
  std::function<absl::Time()> Fn() {
    return [this] { return now; };
  }
  void Pass() { now += UnreadFds::kRefreshEvery; }
};

TEST(UnreadFdsTest, AUidPastItsShareIsRefusedUntilItsPeerReads) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/4, /*total=*/100, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  ASSERT_TRUE(u.Reserve(h, 3).ok());
  SendUnread(p);
  u.Sent(h, 3);
  absl::Status s = u.Reserve(h, 2);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("3 fds hallocd sent to processes of uid 1000 are still unread"),
            std::string::npos)
      << s;
  EXPECT_EQ(u.unread(1000), 3u) << "a refusal reserves nothing";
  // Another uid is not held back by this one.
  Pair q = Connected();
  EXPECT_TRUE(u.Reserve(u.Open(q.daemon.get(), 2000), 4).ok());
  // Once everything sent was read, the count starts over (the sending
  // connection's own socket is looked at whenever it would not fit).
  ReadAll(p);
  EXPECT_TRUE(u.Reserve(h, 2).ok());
  EXPECT_EQ(u.unread(1000), 2u);
  u.Unreserve(h, 2);  // a send that failed
  EXPECT_EQ(u.unread(1000), 0u);
}

// A large record (a reply of 64 buffers) takes many times kMinRecordBytes
// of queue: it must count as the one record it is. Before, the queue's
// bytes over kMinRecordBytes let up to 16 records of 64 fds stay counted
// after their peer had read all but the last, and two busy connections of
// one uid were refused (the bench's scale holders were).
TEST(UnreadFdsTest, ALargeRecordCountsAsOneRecord) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/200, /*total=*/1000, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  const std::string reply(8000, 'r');
  // Three replies of 64 fds; the client read the first two.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(u.Reserve(h, 64, reply.size()).ok()) << i;
    ASSERT_TRUE(SendRecord(p.daemon.get(), reply, {}, false).ok());
    u.Sent(h, 64, reply.size());
    if (i < 2) ReadAll(p);
  }
  EXPECT_EQ(u.unread(1000), 192u) << "not looked at yet";
  // A fourth does not fit (256 > 200) until the socket is looked at: one
  // 8000-byte record is queued, so one counts.
  absl::Status s = u.Reserve(h, 64, reply.size());
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(u.unread(1000), 128u);
}

// A client reading every reply while it allocates fast, on one connection:
// its own socket is looked at whenever it would not fit, not once per
// kRefreshEvery (the clock here never moves).
TEST(UnreadFdsTest, TheSendingConnectionIsAlwaysLookedAt) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/200, /*total=*/1000, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  for (int i = 0; i < 20; ++i) {
    absl::Status s = u.Reserve(h, 64, 100);
    ASSERT_TRUE(s.ok()) << "call " << i << ": " << s;
    SendUnread(p);
    u.Sent(h, 64, 100);
    ReadAll(p);
  }
}

// The count of every connection of the uid is looked at, not only the one
// sending: a client spread over many connections that read all they got
// is not refused for what the others once received.
TEST(UnreadFdsTest, EveryConnectionOfTheUidIsRefreshed) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/4, /*total=*/100, clock.Fn());
  Pair a = Connected(), b = Connected();
  const uint64_t ha = u.Open(a.daemon.get(), 1000), hb = u.Open(b.daemon.get(), 1000);
  ASSERT_TRUE(u.Reserve(ha, 2).ok());
  ASSERT_TRUE(u.Reserve(hb, 2).ok());
  SendUnread(a);
  SendUnread(b);
  u.Sent(ha, 2);
  u.Sent(hb, 2);
  EXPECT_EQ(u.Reserve(hb, 1).code(), StatusCode::kResourceExhausted);
  ReadAll(a);  // only a's peer reads: b still counts its 2
  clock.Pass();
  ASSERT_TRUE(u.Reserve(hb, 1).ok());
  EXPECT_EQ(u.unread(1000), 3u);
}

// A busy client always has an answer or two in flight: what counts is
// what its queue can still hold, not everything sent since it was last
// seen with an empty queue.
TEST(UnreadFdsTest, OnlyWhatTheQueueCanHoldCounts) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/8, /*total=*/100, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(u.Reserve(h, 1).ok());
    SendUnread(p);
    u.Sent(h, 1);
  }
  // The peer takes all but the latest.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ReceiveRecord(p.client.get(), true).ok());
  ASSERT_TRUE(u.Reserve(h, 4).ok()) << "6 counted though 5 were read";
  EXPECT_LE(u.unread(1000), 7u);
  EXPECT_GE(u.unread(1000), 5u) << "the one still queued and the 4 just reserved";
}

TEST(UnreadFdsTest, TheTotalBoundsAllUids) {
  UnreadFds u(/*per_uid=*/10, /*total=*/12);
  Pair a = Connected(), b = Connected();
  const uint64_t ha = u.Open(a.daemon.get(), 1), hb = u.Open(b.daemon.get(), 2);
  ASSERT_TRUE(u.Reserve(ha, 10).ok());
  SendUnread(a);
  u.Sent(ha, 10);
  absl::Status s = u.Reserve(hb, 3);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("10 fds hallocd sent are still unread (limit 12)"),
            std::string::npos)
      << s;
  EXPECT_TRUE(u.Reserve(hb, 2).ok());
  EXPECT_EQ(u.total(), 12u);
}

// A connection that ends with fds unread (its peer shut down only its
// writing side, so hallocd closed it) keeps counting until they are read;
// its socket is held open meanwhile, then closed.
TEST(UnreadFdsTest, ARetiredConnectionCountsUntilItsPeerReadsOrCloses) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/4, /*total=*/100, clock.Fn());
  int kept = 0;  // the sweeper is told of each socket kept, and only those
  u.OnRetire([&kept] { ++kept; });
  for (bool peer_closes : {false, true}) {
    SCOPED_TRACE(peer_closes ? "peer closes" : "peer reads");
    Pair p = Connected();
    const uint64_t h = u.Open(p.daemon.get(), 1000);
    ASSERT_TRUE(u.Reserve(h, 4).ok());
    SendUnread(p);
    u.Sent(h, 4);
    const int kept_before = kept;
    u.Retire(h, std::move(p.daemon));
    EXPECT_EQ(kept, kept_before + 1);
    EXPECT_EQ(u.unread(1000), 4u);
    EXPECT_EQ(u.Sweep(), 1u);
    EXPECT_EQ(u.retired(1000), 1u) << "counts as a connection of its uid";
    EXPECT_EQ(u.retired(2000), 0u);
    EXPECT_EQ(u.retired(), 1u);
    Pair other = Connected();
    EXPECT_EQ(u.Reserve(u.Open(other.daemon.get(), 1000), 1).code(),
              StatusCode::kResourceExhausted);
    if (peer_closes) {
      p.client.reset();
    } else {
      ReadAll(p);
    }
    EXPECT_EQ(u.Sweep(), 0u);
    EXPECT_EQ(u.unread(1000), 0u);
    EXPECT_EQ(u.retired(1000), 0u);
    EXPECT_EQ(u.retired(), 0u);
  }
  // Retired with nothing unread: closed at once.
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  ASSERT_TRUE(u.Reserve(h, 1).ok());
  u.Sent(h, 1);
  u.Retire(h, std::move(p.daemon));
  EXPECT_EQ(kept, 2) << "nothing kept, nothing to tell";
  EXPECT_EQ(u.Sweep(), 0u);
  char c;
  EXPECT_EQ(::recv(p.client.get(), &c, 1, MSG_DONTWAIT), 0) << "hallocd's end still open";
}

// A reservation whose send has not gone out yet is not in the queue: a
// refresh then (another thread's send on the connection, or another
// connection's of the uid) must not take it for read. Before, it did, and
// the record went out uncounted.
TEST(UnreadFdsTest, AReservationNotSentYetIsNotTakenForRead) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/4, /*total=*/100, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  ASSERT_TRUE(u.Reserve(h, 3).ok());  // its sendmsg not made yet
  // Another send on the connection that does not fit looks at the socket,
  // whose queue is empty.
  EXPECT_EQ(u.Reserve(h, 2).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(u.unread(1000), 3u);
  SendUnread(p);
  u.Sent(h, 3);
  clock.Pass();
  EXPECT_EQ(u.Reserve(h, 2).code(), StatusCode::kResourceExhausted) << "the 3 are queued now";
  ReadAll(p);
  EXPECT_TRUE(u.Reserve(h, 2).ok());
  EXPECT_EQ(u.unread(1000), 2u);
  // A failed send gives its pending reservation back, not a sent one.
  u.Unreserve(h, 2);
  EXPECT_EQ(u.unread(1000), 0u);
}

// Two sends on one connection whose reservations came in the other order:
// what is queued is counted by the order they went out. The client reads
// the 1-fd record that went first; the 64 queued behind it still count.
TEST(UnreadFdsTest, SendsCountInTheOrderTheyWentOutNotReserved) {
  FakeClock clock;
  UnreadFds u(/*per_uid=*/100, /*total=*/1000, clock.Fn());
  Pair p = Connected();
  const uint64_t h = u.Open(p.daemon.get(), 1000);
  ASSERT_TRUE(u.Reserve(h, 64, 10).ok());  // an Allocate of 64
  ASSERT_TRUE(u.Reserve(h, 1, 10).ok());   // an Import, sent first
  ASSERT_TRUE(SendRecord(p.daemon.get(), std::string(10, 'i'), {}, false).ok());
  u.Sent(h, 1, 10);
  ASSERT_TRUE(SendRecord(p.daemon.get(), std::string(10, 'a'), {}, false).ok());
  u.Sent(h, 64, 10);
  absl::StatusOr<Record> first = ReceiveRecord(p.client.get(), /*nonblocking=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->bytes, std::string(10, 'i'));
  // 40 more do not fit beside the 64 still queued, however it looks.
  EXPECT_EQ(u.Reserve(h, 40, 10).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(u.unread(1000), 64u);
}

// Through the channel: a client that never reads is refused with a reason
// once its share is unread, and served again once it has read.
TEST(UnreadFdsTest, TheChannelCountsWhatItSends) {
  FakeClock clock;
  auto u = std::make_shared<UnreadFds>(/*per_uid=*/3, /*total=*/100, clock.Fn());
  Pair p = Connected();
  UniqueFd client = std::move(p.client);
  SocketFdChannel channel(std::move(p.daemon), 1000, u);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd r(pipe_fds[0]), w(pipe_fds[1]);
  const int fds[] = {r.get()};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(channel.SendCounted("x", fds).ok()) << i;
  EXPECT_EQ(channel.SendCounted("x", fds).code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(channel.SendCounted("no fds", {}).ok()) << "records without fds still go";
  EXPECT_EQ(u->unread(1000), 3u);
  while (ReceiveRecord(client.get(), true).ok()) {
  }
  clock.Pass();
  EXPECT_TRUE(channel.SendCounted("x", fds).ok());
  EXPECT_EQ(u->unread(1000), 1u);
}

}  // namespace
}  // namespace halloc
