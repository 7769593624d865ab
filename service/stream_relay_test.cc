#include "service/stream_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/scm_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/h2_guard.h"
#include "service/http2_testing.h"
#include "service/util/foreign_fds.h"
#include "service/util/lingering_socket.h"

namespace halloc {
namespace {

std::pair<UniqueFd, UniqueFd> StreamPair() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Up to `n` bytes from `fd` within `ms` (fewer at its end); "" on timeout.
std::string ReadSome(int fd, size_t n, int ms) {
  std::string out;
  const absl::Time deadline = absl::Now() + absl::Milliseconds(ms);
  while (out.size() < n) {
    const int left = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, left) != 1) break;
    char buf[65536];
    const ssize_t got = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), MSG_DONTWAIT);
    if (got <= 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  return out;
}

// Whether `fd` sees its peer's end (a read of 0) within `ms`.
bool SeesEnd(int fd, int ms) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(ms);
  for (;;) {
    const int left = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, left) != 1) return false;
    char buf[4096];
    const ssize_t got = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (got == 0) return true;
    if (got < 0 && errno != EAGAIN) return true;
  }
}

// Writes a pattern to `fd` until it takes no more (nobody reads the other
// end of the relay) or `most` bytes went; returns what was written.
std::string Fill(int fd, size_t most) {
  std::string sent;
  char piece[16384];
  while (sent.size() < most) {
    for (size_t i = 0; i < sizeof(piece); ++i) {
      const size_t at = sent.size() + i;
      piece[i] = static_cast<char>(at * 7 + at / 4096);
    }
    ssize_t n = ::send(fd, piece, sizeof(piece), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      // Full now; once more after the relay had a moment to move a chunk.
      absl::SleepFor(absl::Milliseconds(50));
      n = ::send(fd, piece, sizeof(piece), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    if (n <= 0) break;
    sent.append(piece, static_cast<size_t>(n));
  }
  return sent;
}

// All of `sent` comes out of `fd` (within 30 s), nothing else.
void ExpectAllOf(int fd, const std::string& sent) {
  const std::string got = ReadSome(fd, sent.size() + 1, 30000);
  EXPECT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent) << "not the bytes sent";
}

bool WaitRelayed(const StreamRelay& relay, size_t n) {
  for (int i = 0; i < 2000 && relay.relayed() != n; ++i) absl::SleepFor(absl::Milliseconds(5));
  return relay.relayed() == n;
}

class StreamRelayTest : public ::testing::Test {
 protected:
  // Sockets sent along keep their linger time here (hallocd closes them
  // abortively): the one file these tests can hold a thread with.
  void SetUp() override {
    ForeignFds::bound_releases = false;
    // A short linger: connections ended with bytes unread end soon.
    absl::StatusOr<std::unique_ptr<StreamRelay>> r = StreamRelay::Start(absl::Seconds(1));
    ForeignFds::bound_releases = true;
    ASSERT_TRUE(r.ok()) << r.status();
    relay_ = *std::move(r);
  }
  // A relay of its own, with `linger`.
  static std::unique_ptr<StreamRelay> StartRelay(absl::Duration linger) {
    absl::StatusOr<std::unique_ptr<StreamRelay>> r = StreamRelay::Start(linger);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : nullptr;
  }
  // A connection relayed by `relay` (the fixture's by default): the
  // client's end and gRPC's end (invalid if Add failed).
  std::pair<UniqueFd, UniqueFd> Relayed(uid_t uid = 1000, StreamRelay* relay = nullptr) {
    auto [client, ours] = StreamPair();
    absl::StatusOr<UniqueFd> grpc_end = (relay ? relay : relay_.get())->Add(std::move(ours), uid);
    EXPECT_TRUE(grpc_end.ok()) << grpc_end.status();
    return {std::move(client), grpc_end.ok() ? *std::move(grpc_end) : UniqueFd()};
  }
  std::unique_ptr<StreamRelay> relay_;
};

TEST_F(StreamRelayTest, MovesBytesBothWaysAndPassesEndsOn) {
  auto [client, server] = Relayed();
  ASSERT_EQ(::write(client.get(), "hello", 5), 5);
  EXPECT_EQ(ReadSome(server.get(), 5, 5000), "hello");
  ASSERT_EQ(::write(server.get(), "world", 5), 5);
  EXPECT_EQ(ReadSome(client.get(), 5, 5000), "world");

  // More than the socket buffers and the relay's chunk hold, read while
  // written: all of it, in order.
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 4096);
  std::thread writer([&, fd = client.get()] {
    size_t off = 0;
    while (off < big.size()) {
      const ssize_t n = ::write(fd, big.data() + off, big.size() - off);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  });
  EXPECT_TRUE(ReadSome(server.get(), big.size(), 30000) == big);
  writer.join();

  // The client's half-close reaches gRPC; gRPC's last words and end reach
  // the client.
  ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
  EXPECT_TRUE(SeesEnd(server.get(), 5000));
  ASSERT_EQ(::write(server.get(), "bye", 3), 3);
  server.reset();
  EXPECT_EQ(ReadSome(client.get(), 3, 5000), "bye");
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay_, 0));
}

TEST_F(StreamRelayTest, GrpcEndingAConnectionEndsItForTheClient) {
  auto [client, server] = Relayed();
  EXPECT_TRUE(WaitRelayed(*relay_, 1));
  ::shutdown(server.get(), SHUT_RDWR);
  server.reset();
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay_, 0));
  // A client gone entirely ends it too.
  auto [c2, s2] = Relayed();
  c2.reset();
  EXPECT_TRUE(SeesEnd(s2.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay_, 0));
}

// What a client sent before it closed reaches gRPC whole, as it would on a
// direct connection (its last request, say), however much gRPC had yet to
// take when the relay saw the close; then the end. The relay dropped all
// it had not moved by then.
TEST_F(StreamRelayTest, AClientsLastBytesReachGrpcAfterItCloses) {
  std::unique_ptr<StreamRelay> relay = StartRelay(absl::Minutes(1));
  ASSERT_NE(relay, nullptr);
  auto [client, server] = Relayed(1000, relay.get());
  ASSERT_TRUE(server);
  const std::string sent = Fill(client.get(), 4 << 20);
  client.reset();
  absl::SleepFor(absl::Milliseconds(100));  // the relay sees the close before gRPC reads
  ExpectAllOf(server.get(), sent);
  EXPECT_TRUE(SeesEnd(server.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay, 0));
}

// And what gRPC wrote before it ended a connection (its last replies, a
// GOAWAY) reaches the client whole, then the end. The relay passed on what
// the client's socket took at that moment and dropped the rest.
TEST_F(StreamRelayTest, GrpcsLastBytesReachTheClientAfterItEnds) {
  std::unique_ptr<StreamRelay> relay = StartRelay(absl::Minutes(1));
  ASSERT_NE(relay, nullptr);
  auto [client, server] = Relayed(1000, relay.get());
  ASSERT_TRUE(server);
  const std::string sent = Fill(server.get(), 4 << 20);
  server.reset();
  absl::SleepFor(absl::Milliseconds(100));
  ExpectAllOf(client.get(), sent);
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay, 0));
}

// A write that fails because its destination went is that end's hang-up,
// seen before its EPOLLHUP: what the other end sent still goes on. Here
// gRPC writes (a WINDOW_UPDATE, say) to a client that sent its last
// request and closed; the relay, writing it, got EPIPE and ended the pipe,
// the rest of the request dropped.
TEST_F(StreamRelayTest, AClosedClientsBytesReachGrpcThoughGrpcWroteToItMeanwhile) {
  std::unique_ptr<StreamRelay> relay = StartRelay(absl::Minutes(1));
  ASSERT_NE(relay, nullptr);
  auto [client, ours] = StreamPair();
  const std::string sent = Fill(client.get(), 4 << 20);  // what the socket holds, unread
  ASSERT_GT(sent.size(), StreamRelay::kChunk);
  client.reset();
  absl::StatusOr<UniqueFd> server = relay->Add(std::move(ours), 1000);
  ASSERT_TRUE(server.ok()) << server.status();
  // Before the relay reads a byte, mostly (after it ended the pipe, EPIPE).
  (void)::send(server->get(), "x", 1, MSG_NOSIGNAL);
  ExpectAllOf(server->get(), sent);
  EXPECT_TRUE(WaitRelayed(*relay, 0));
}

// A client's bytes after fds it sent, then its close: the bytes wait for
// the fds' close (as on a live connection), then reach gRPC.
TEST_F(StreamRelayTest, AClosedClientsBytesAfterItsFdsReachGrpcOnceTheFdsAreClosed) {
  auto [client, ours] = StreamPair();
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  ASSERT_EQ(::write(client.get(), "a", 1), 1);
  ASSERT_EQ(SendRaw(client.get(), "b", {write_end.get()}), 1);
  ASSERT_EQ(::write(client.get(), "c", 1), 1);
  client.reset();  // gone before the relay reads a byte
  absl::StatusOr<UniqueFd> server = relay_->Add(std::move(ours), 1000);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(ReadSome(server->get(), 4, 10000), "abc");
  EXPECT_TRUE(SeesEnd(server->get(), 5000));
}

// Neither end can keep a pipe for good by not reading what the other left:
// after the linger the connection ends (its uid's count drops with it),
// the rest dropped.
TEST_F(StreamRelayTest, WhatAGoneEndLeftIsDroppedAfterTheLinger) {
  std::unique_ptr<StreamRelay> relay = StartRelay(absl::Milliseconds(200));
  ASSERT_NE(relay, nullptr);
  auto [client, server] = Relayed(1000, relay.get());
  ASSERT_TRUE(server);
  const std::string sent = Fill(server.get(), 4 << 20);
  server.reset();  // gRPC gone; the client reads nothing
  auto [client2, server2] = Relayed(1000, relay.get());
  ASSERT_TRUE(server2);
  const std::string sent2 = Fill(client2.get(), 4 << 20);
  client2.reset();  // the client gone; gRPC reads nothing
  EXPECT_TRUE(WaitRelayed(*relay, 0)) << "a gone end's pipe stays";
  EXPECT_LT(ReadSome(client.get(), sent.size() + 1, 10000).size(), sent.size());
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  EXPECT_LT(ReadSome(server2.get(), sent2.size() + 1, 10000).size(), sent2.size());
}

// Fds attached to a client's bytes never reach gRPC's end: they are closed
// on a ForeignFds thread, the bytes go on. Queued before the relay takes the
// connection, so the record holds the lingering socket's last reference.
TEST_F(StreamRelayTest, FdsAreTakenOffAndTheirSenderWaitsForTheirClose) {
  auto [client, ours] = StreamPair();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  const int fds[] = {lingering->sock.get()};
  ASSERT_TRUE(SendRecord(client.get(), "PRI", fds, false).ok());
  lingering->sock.reset();
  absl::StatusOr<UniqueFd> server = relay_->Add(std::move(ours), 1000);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(ReadSome(server->get(), 3, 5000), "PRI");

  // Others are relayed meanwhile; the sender is not read.
  auto [other, other_server] = Relayed(1001);
  ASSERT_EQ(::write(other.get(), "ok", 2), 2);
  EXPECT_EQ(ReadSome(other_server.get(), 2, 5000), "ok");
  ASSERT_EQ(::write(client.get(), "more", 4), 4);
  EXPECT_EQ(ReadSome(server->get(), 4, 300), "");

  lingering->Release();
  EXPECT_EQ(ReadSome(server->get(), 4, 10000), "more");
}

// A discarded connection (refused, say) is ended, and what it queued is
// dropped unopened by a ForeignFds drain: its lingering socket holds
// neither the caller nor the relay (another connection is relayed). (The
// drain's release waits here, with ticks off, until the linger ends.)
TEST_F(StreamRelayTest, ADiscardedConnectionIsEndedOffTheRelaysThread) {
  auto [client, ours] = StreamPair();
  ASSERT_EQ(::write(client.get(), "abc", 3), 3);  // bytes first, read off here
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  ASSERT_EQ(SendRaw(client.get(), "x", {lingering->sock.get()}), 1);
  lingering->sock.reset();  // the record holds its last reference
  auto [watched, sent] = StreamPair();
  ASSERT_EQ(SendRaw(client.get(), "y", {sent.get()}), 1);
  sent.reset();
  relay_->Discard(std::move(ours), 1000);
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  auto [other, other_server] = Relayed(1001);
  ASSERT_EQ(::write(other.get(), "ok", 2), 2);
  EXPECT_EQ(ReadSome(other_server.get(), 2, 10000), "ok") << "the relay is held";
  EXPECT_EQ(relay_->relayed(), 1u);
  lingering->Release();
  EXPECT_TRUE(SeesEnd(watched.get(), 10000)) << "the drain never took the queued record";
}

// Refused connections' queued fds are never installed in hallocd: each
// connection goes to a drain (one fd of its uid's, for a moment), so a uid
// whose closes are held (a file whose flush never ends: here a lingering
// socket, ticks off) cannot pile a record's worth per refused connection
// onto what waits. Before, the first record's fds of each were installed
// and queued for closing behind the held one: over the uid's limit at once,
// and with a few uids over everyone's, when hallocd stops accepting.
TEST_F(StreamRelayTest, RefusedConnectionsFdsAreNeverInstalled) {
  auto [sender, sender_ours] = StreamPair();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  ASSERT_EQ(SendRaw(sender.get(), "x", {lingering->sock.get()}), 1);
  lingering->sock.reset();
  absl::StatusOr<UniqueFd> sender_server = relay_->Add(std::move(sender_ours), 1000);
  ASSERT_TRUE(sender_server.ok());
  EXPECT_EQ(ReadSome(sender_server->get(), 1, 5000), "x");  // uid 1000's closes are held now

  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  std::vector<UniqueFd> clients;
  for (int c = 0; c < 3; ++c) {
    auto [client, ours] = StreamPair();
    const std::vector<int> many(100, write_end.get());
    ASSERT_EQ(SendRaw(client.get(), "z", many), 1);
    relay_->Discard(std::move(ours), 1000);
    clients.push_back(std::move(client));
  }
  write_end.reset();  // the queued records hold the write end's last references
  for (UniqueFd& c : clients) EXPECT_TRUE(SeesEnd(c.get(), 5000));
  // Dropped unopened by the drains: the pipe sees its writers gone.
  EXPECT_TRUE(SeesEnd(read_end.get(), 10000)) << "the refused connections' fds are held";
  EXPECT_FALSE(relay_->OverLimit(1000)) << "their fds were charged to the uid";
  lingering->Release();
}

// Connections that end with bytes unread but no fds are not charged to
// their uid, even while a ForeignFds thread is held by someone else's file:
// only what carried fds counts.
TEST_F(StreamRelayTest, OrdinaryEndsAreNotChargedToTheirUid) {
  auto [sender, sender_ours] = StreamPair();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  ASSERT_EQ(SendRaw(sender.get(), "x", {lingering->sock.get()}), 1);
  lingering->sock.reset();
  absl::StatusOr<UniqueFd> sender_server = relay_->Add(std::move(sender_ours), 2000);
  ASSERT_TRUE(sender_server.ok());
  EXPECT_EQ(ReadSome(sender_server->get(), 1, 5000), "x");  // the thread is held now

  std::vector<UniqueFd> servers;  // gRPC's ends, never read: data stays queued
  for (uint64_t i = 0; i < StreamRelay::kMaxForeignFdsPerUid + 4; ++i) {
    auto [client, server] = Relayed(1000);
    const std::string bytes(256 * 1024, 'y');
    (void)::send(client.get(), bytes.data(), bytes.size(), MSG_DONTWAIT);
    client.reset();  // ends with bytes unread
    servers.push_back(std::move(server));
  }
  EXPECT_TRUE(WaitRelayed(*relay_, 1)) << "ended";
  EXPECT_FALSE(relay_->OverLimit(1000)) << "ordinary ends charged";
  lingering->Release();
}

// An out-of-band byte is relayed with the rest, and its fds taken off like
// any: skipped, the kernel would drop them in the relay's read, and a
// lingering socket's release would hold the relay (every control
// connection) for its linger time. As hallocd runs: sockets disarmed.
TEST_F(StreamRelayTest, AnOutOfBandByteAndItsFdsAreTakenOffToo) {
  absl::StatusOr<std::unique_ptr<StreamRelay>> relay = StreamRelay::Start();
  ASSERT_TRUE(relay.ok()) << relay.status();
  auto [client, ours] = StreamPair();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  ASSERT_EQ(::write(client.get(), "ab", 2), 2);
  if (SendRaw(client.get(), "X", {lingering->sock.get()}, MSG_OOB) != 1) {
    GTEST_SKIP() << "no out-of-band data on Unix sockets here: " << std::strerror(errno);
  }
  ASSERT_EQ(::write(client.get(), "cd", 2), 2);
  lingering->sock.reset();  // the record holds its last reference
  absl::StatusOr<UniqueFd> server = (*relay)->Add(std::move(ours), 1000);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(ReadSome(server->get(), 5, 10000), "abXcd");

  auto [other, other_ours] = StreamPair();
  absl::StatusOr<UniqueFd> other_server = (*relay)->Add(std::move(other_ours), 1001);
  ASSERT_TRUE(other_server.ok()) << other_server.status();
  ASSERT_EQ(::write(other.get(), "ok", 2), 2);
  EXPECT_EQ(ReadSome(other_server->get(), 2, 10000), "ok") << "the relay is held";
  lingering->Release();
}

// A header block past H2Guard's bounds (a value trickled in CONTINUATION
// frames, CVE-2023-33953) ends its connection before gRPC reads it; the
// bytes before it went on.
TEST_F(StreamRelayTest, AHeaderBlockPastItsBoundsEndsTheConnectionBeforeGrpcReadsIt) {
  using http2_testing::SizedFrame;
  auto [client, server] = Relayed();
  const std::string start = std::string(http2_testing::kPreface) +
                            SizedFrame(http2_testing::kSettings, 0, 0, 0) +
                            SizedFrame(http2_testing::kHeaders, http2_testing::kEndHeaders, 1, 40);
  ASSERT_EQ(::write(client.get(), start.data(), start.size()), static_cast<ssize_t>(start.size()));
  EXPECT_EQ(ReadSome(server.get(), start.size(), 5000), start);
  std::string trickle = SizedFrame(http2_testing::kHeaders, 0, 3, 1);
  for (uint32_t i = 0; i < H2Guard::kMaxHeaderBlockFrames; ++i) {
    trickle += SizedFrame(http2_testing::kContinuation, 0, 3, 1);
  }
  ASSERT_EQ(::write(client.get(), trickle.data(), trickle.size()),
            static_cast<ssize_t>(trickle.size()));
  EXPECT_TRUE(SeesEnd(client.get(), 5000));
  EXPECT_EQ(ReadSome(server.get(), trickle.size(), 2000), "") << "gRPC got the block";
  EXPECT_TRUE(SeesEnd(server.get(), 5000));
  EXPECT_TRUE(WaitRelayed(*relay_, 0));
}

// Stream resets are charged to their uid, all its connections together:
// past its budget (a rapid-reset flood, CVE-2023-44487) the connection that
// sent them ends; another uid's are its own.
TEST_F(StreamRelayTest, ResetsPastTheUidsBudgetEndTheConnection) {
  using http2_testing::SizedFrame;
  auto resets = [](uint32_t n, uint32_t first) {
    std::string s;
    for (uint32_t i = 0; i < n; ++i) {
      s +=
          SizedFrame(http2_testing::kHeaders, http2_testing::kEndHeaders, 2 * (first + i) + 1, 10) +
          SizedFrame(http2_testing::kRstStream, 0, 2 * (first + i) + 1, 4);
    }
    return s;
  };
  auto [calm, calm_server] = Relayed(2000);
  const std::string some = std::string(http2_testing::kPreface) + resets(100, 0);
  ASSERT_EQ(::write(calm.get(), some.data(), some.size()), static_cast<ssize_t>(some.size()));
  EXPECT_EQ(ReadSome(calm_server.get(), some.size(), 5000).size(), some.size());

  auto [first, first_server] = Relayed(1000);
  auto [second, second_server] = Relayed(1000);
  const uint32_t half = static_cast<uint32_t>(StreamRelay::kResetBurst / 2);
  const std::string flood = std::string(http2_testing::kPreface) + resets(half + 50, 0);
  ASSERT_EQ(::write(first.get(), flood.data(), flood.size()), static_cast<ssize_t>(flood.size()));
  EXPECT_EQ(ReadSome(first_server.get(), flood.size(), 5000).size(), flood.size())
      << "within the budget";
  std::thread writer([&, fd = second.get()] {
    for (size_t off = 0; off < flood.size();) {
      const ssize_t n = ::send(fd, flood.data() + off, flood.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  });
  EXPECT_TRUE(SeesEnd(second.get(), 5000)) << "the uid's second connection went past it";
  writer.join();
  // Connecting anew gets no budget back: it refills at its rate alone.
  first.reset();
  second.reset();
  ASSERT_TRUE(WaitRelayed(*relay_, 1));
  auto [third, third_server] = Relayed(1000);
  const std::string again = std::string(http2_testing::kPreface) +
                            resets(static_cast<uint32_t>(StreamRelay::kResetBurst) - 100, 5000);
  std::thread rewriter([&, fd = third.get()] {
    for (size_t off = 0; off < again.size();) {
      const ssize_t n = ::send(fd, again.data() + off, again.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  });
  EXPECT_TRUE(SeesEnd(third.get(), 5000)) << "a new connection of the uid got a whole budget";
  rewriter.join();
  // The calm uid's connection is still relayed.
  const std::string more = resets(10, 100);
  ASSERT_EQ(::write(calm.get(), more.data(), more.size()), static_cast<ssize_t>(more.size()));
  EXPECT_EQ(ReadSome(calm_server.get(), more.size(), 5000).size(), more.size());
}

}  // namespace
}  // namespace halloc
