#include "service/util/foreign_fds.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm_testing.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/util/lingering_socket.h"

namespace halloc {
namespace {

std::pair<UniqueFd, UniqueFd> SeqpacketPair() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

std::pair<UniqueFd, UniqueFd> Pipe() {
  int p[2];
  EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

// Whether `fd` (a pipe's read end) sees the end within `ms`.
bool SeesEnd(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return false;
  char c;
  return ::read(fd, &c, 1) == 0;
}

// Releases are unbounded while one lives (sockets linger, no ticks): a
// lingering socket then stands in for a FUSE file whose flush waits for its
// server, the one wait hallocd cannot cut short.
class KeepLinger {
 public:
  KeepLinger() { ForeignFds::bound_releases = false; }
  ~KeepLinger() { ForeignFds::bound_releases = true; }
};

std::vector<UniqueFd> One(UniqueFd fd) {
  std::vector<UniqueFd> v;
  v.push_back(std::move(fd));
  return v;
}

// Sends a record of `bytes` carrying `fd` on `sock`, then closes this
// copy: the queued record holds the file's last reference.
bool Queue(int sock, const char* bytes, UniqueFd fd) {
  const int fds[] = {fd.get()};
  return SendRecord(sock, bytes, fds, false).ok();
}

// Closes a socket lingering 60 s as connection `key` of `uid`: under
// KeepLinger it holds a thread and that uid's lane until released.
LingeringSocket HoldLane(ForeignFds& foreign, uint64_t key, uid_t uid) {
  absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(absl::Seconds(60));
  EXPECT_TRUE(l.ok()) << l.status();
  if (!l.ok()) return {};
  foreign.Close(key, uid, One(std::move(l->sock)));
  return *std::move(l);
}

// Waits (up to 10 s) until nothing of `key` waits in `fds`.
bool WaitDone(ForeignFds& fds, uint64_t key) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (fds.Waiting(key) && absl::Now() < deadline) {
    pollfd p{fds.ready_fd(), POLLIN, 0};
    ::poll(&p, 1, 100);
    fds.Acknowledge();
  }
  return !fds.Waiting(key);
}

TEST(StopReceivingTest, TakesPlainRecordsOffAndTheSenderCanSendNoMore) {
  auto [a, b] = SeqpacketPair();
  ASSERT_TRUE(SendRecord(a.get(), "one", {}, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "", {}, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "three", {}, false).ok());
  EXPECT_FALSE(StopReceiving(b.get()));
  char c;
  EXPECT_EQ(::recv(b.get(), &c, 1, MSG_DONTWAIT), 0) << "the queue is empty";
  EXPECT_EQ(SendRecord(a.get(), "late", {}, false).code(), absl::StatusCode::kUnavailable)
      << "EPIPE at the sender";
  // Nothing queued at all.
  auto [x, y] = SeqpacketPair();
  EXPECT_FALSE(StopReceiving(y.get()));
}

// A record with fds is left queued, its fds never installed here: closing
// an installed one would drop this process's POSIX lock on the file.
TEST(StopReceivingTest, LeavesARecordWithFdsWithoutInstallingThem) {
  LockedFile locked = LockTempFile();
  ASSERT_FALSE(locked.path.empty());
  const UniqueFd& file = locked.fd;
  const std::string& path = locked.path;
  ASSERT_TRUE(OthersSeeOurLock(path));

  auto [a, b] = SeqpacketPair();
  auto [r, w] = Pipe();
  ASSERT_TRUE(SendRecord(a.get(), "plain", {}, false).ok());
  const int fds[] = {file.get(), w.get()};
  ASSERT_TRUE(SendRecord(a.get(), "with fds", fds, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "after", {}, false).ok());
  w.reset();  // the queued record holds the pipe's only write end
  EXPECT_TRUE(StopReceiving(b.get()));
  EXPECT_TRUE(OthersSeeOurLock(path)) << "an fd was installed here and closed";
  EXPECT_FALSE(SeesEnd(r.get(), 0));

  // Drained on a thread: the record's fds are dropped there unopened (the
  // pipe's write end is released), never installed and closed (which
  // would have dropped the lock, and run a FUSE file's flush).
  absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  (*foreign)->Drain(3, 1000, UniqueFd(::dup(b.get())));
  ASSERT_TRUE(WaitDone(**foreign, 3));
  EXPECT_TRUE(SeesEnd(r.get(), 5000));
  EXPECT_TRUE(OthersSeeOurLock(path)) << "a drained fd was installed and closed";
  EXPECT_EQ((*foreign)->waiting_of(1000), 0u);
  char c;
  EXPECT_EQ(::recv(b.get(), &c, 1, MSG_DONTWAIT), 0) << "drained to the end";
  ::unlink(path.c_str());
}

// A file whose release waits holds the thread, not the caller; what waits
// behind it is counted per connection and per uid until it is closed.
TEST(ForeignFdsTest, ClosesOnItsOwnThreadAndCountsWhatWaits) {
  KeepLinger keep;
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(2, 3);
  ASSERT_TRUE(created.ok()) << created.status();
  ForeignFds& foreign = **created;
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(60));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  std::vector<UniqueFd> first;
  first.push_back(std::move(lingering->sock));
  foreign.Close(7, 1000, std::move(first));
  EXPECT_TRUE(foreign.Waiting(7));
  EXPECT_EQ(foreign.waiting_of(1000), 1u);
  EXPECT_FALSE(foreign.OverLimit(1000));

  auto [r, w] = Pipe();
  std::vector<UniqueFd> second;
  second.push_back(std::move(w));
  foreign.Close(8, 1000, std::move(second));
  EXPECT_TRUE(foreign.Waiting(8));
  EXPECT_EQ(foreign.waiting_of(1000), 2u);
  EXPECT_TRUE(foreign.OverLimit(1000));
  EXPECT_FALSE(foreign.OverLimit(1001));
  EXPECT_FALSE(foreign.Full());
  auto [r3, w3] = Pipe();
  std::vector<UniqueFd> third;
  third.push_back(std::move(w3));
  foreign.Close(9, 1000, std::move(third));
  EXPECT_TRUE(foreign.Full()) << "3 wait in all";
  EXPECT_FALSE(SeesEnd(r.get(), 200)) << "queued behind the lingering socket";

  lingering->Release();
  EXPECT_TRUE(WaitDone(foreign, 7));
  EXPECT_TRUE(WaitDone(foreign, 8));
  EXPECT_TRUE(SeesEnd(r.get(), 5000));
  EXPECT_TRUE(WaitDone(foreign, 9));
  EXPECT_EQ(foreign.waiting_of(1000), 0u);
  EXPECT_FALSE(foreign.OverLimit(1000));
  EXPECT_FALSE(foreign.Full());
}

// One uid's close held by its sender's file holds that uid's lane only:
// another uid's fds are closed meanwhile, the held uid's next ones wait.
TEST(ForeignFdsTest, AHeldCloseHoldsOnlyItsUidsLane) {
  KeepLinger keep;
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(created.ok()) << created.status();
  ForeignFds& foreign = **created;
  LingeringSocket lingering = HoldLane(foreign, 1, 1000);
  auto [r_same, w_same] = Pipe();
  foreign.Close(2, 1000, One(std::move(w_same)));
  auto [r_other, w_other] = Pipe();
  foreign.Close(3, 1001, One(std::move(w_other)));

  EXPECT_TRUE(SeesEnd(r_other.get(), 5000)) << "held behind another uid's file";
  EXPECT_TRUE(WaitDone(foreign, 3));
  EXPECT_FALSE(SeesEnd(r_same.get(), 200)) << "a uid's closes are in order";
  EXPECT_TRUE(foreign.Waiting(2));
  lingering.Release();
  EXPECT_TRUE(SeesEnd(r_same.get(), 5000));
  EXPECT_TRUE(WaitDone(foreign, 1));
}

// A uid's drains have a lane of their own: they never flush, so its held
// close does not keep the sockets of its refused connections open.
TEST(ForeignFdsTest, AUidsDrainsDoNotWaitBehindItsHeldClose) {
  KeepLinger keep;
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(created.ok()) << created.status();
  ForeignFds& foreign = **created;
  LingeringSocket lingering = HoldLane(foreign, 1, 1000);

  auto [a, b] = SeqpacketPair();
  auto [r, w] = Pipe();
  ASSERT_TRUE(Queue(a.get(), "x", std::move(w)));
  ASSERT_TRUE(StopReceiving(b.get()));
  foreign.Drain(2, 1000, std::move(b));
  EXPECT_TRUE(SeesEnd(r.get(), 5000)) << "the drain waited behind the held close";
  EXPECT_TRUE(WaitDone(foreign, 2));
  EXPECT_TRUE(foreign.Waiting(1));
  lingering.Release();
  EXPECT_TRUE(WaitDone(foreign, 1));
}

// No more threads than asked for: with both held, a third uid waits.
TEST(ForeignFdsTest, HeldThreadsAreBoundedByMaxThreads) {
  KeepLinger keep;
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(16, 1000, 2);
  ASSERT_TRUE(created.ok()) << created.status();
  ForeignFds& foreign = **created;
  std::vector<LingeringSocket> lingering;
  for (uid_t uid : {1000, 1001}) lingering.push_back(HoldLane(foreign, uid, uid));
  auto [r, w] = Pipe();
  foreign.Close(1002, 1002, One(std::move(w)));
  EXPECT_FALSE(SeesEnd(r.get(), 300)) << "a third thread was started";
  lingering[0].Release();
  EXPECT_TRUE(SeesEnd(r.get(), 5000));
  lingering[1].Release();
  EXPECT_TRUE(WaitDone(foreign, 1001));
}

// A socket among the fds whose own queue holds a lingering socket (a file
// nested in flight, which no SO_LINGER set here reaches): its release is
// cut short by a tick, not waited out.
TEST(ForeignFdsTest, ASocketsQueuedLingeringSocketIsReleasedAtOnce) {
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(2, 3);
  ASSERT_TRUE(created.ok()) << created.status();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  auto [a, b] = SeqpacketPair();
  ASSERT_TRUE(Queue(a.get(), "x", std::move(lingering->sock)));
  a.reset();
  std::vector<UniqueFd> fds;
  fds.push_back(std::move(b));
  (*created)->Close(7, 1000, std::move(fds));
  EXPECT_TRUE(WaitDone(**created, 7)) << "held by the nested socket's linger time";
}

// By default a socket is closed abortively: its linger time holds nothing.
TEST(ForeignFdsTest, ALingeringSocketIsClosedAtOnce) {
  absl::StatusOr<std::unique_ptr<ForeignFds>> created = ForeignFds::Create(2, 3);
  ASSERT_TRUE(created.ok()) << created.status();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  std::vector<UniqueFd> fds;
  fds.push_back(std::move(lingering->sock));
  (*created)->Close(7, 1000, std::move(fds));
  EXPECT_TRUE(WaitDone(**created, 7)) << "held by the linger time";
}

// A drain goes on past an empty record (on a socket with SO_PASSCRED, one
// that reads as 0 bytes with the sender's credentials) to the end.
TEST(ForeignFdsTest, DrainGoesPastEmptyRecords) {
  auto [a, b] = SeqpacketPair();
  auto [r1, w1] = Pipe();
  auto [r2, w2] = Pipe();
  ASSERT_TRUE(Queue(a.get(), "x", std::move(w1)));
  ASSERT_TRUE(SendRecord(a.get(), "", {}, false).ok());
  ASSERT_TRUE(Queue(a.get(), "", std::move(w2)));
  ASSERT_TRUE(SendRecord(a.get(), "", {}, false).ok());
  ASSERT_TRUE(StopReceiving(b.get()));
  absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  // A reference of its own: `b` stays open here, as the broker's channel
  // may keep it, so only the drain can close what is queued.
  (*foreign)->Drain(3, 1000, UniqueFd(::dup(b.get())));
  ASSERT_TRUE(WaitDone(**foreign, 3));
  EXPECT_TRUE(SeesEnd(r1.get(), 5000));
  EXPECT_TRUE(SeesEnd(r2.get(), 5000)) << "stopped at an empty record";
}

// A stream socket's drain ends at the stream's end (where, with
// SO_PASSCRED, every read of 0 bytes carries credentials, as an empty
// datagram does): every record's fds dropped, nothing left spinning.
TEST(ForeignFdsTest, DrainsAStreamSocketToItsEnd) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  auto [r1, w1] = Pipe();
  auto [r2, w2] = Pipe();
  ASSERT_TRUE(Queue(a.get(), "x", std::move(w1)));
  ASSERT_TRUE(SendRecord(a.get(), "plain", {}, false).ok());
  ASSERT_TRUE(Queue(a.get(), "y", std::move(w2)));
  ASSERT_TRUE(StopReceiving(b.get()));
  absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  (*foreign)->Drain(3, 1000, UniqueFd(::dup(b.get())));
  EXPECT_TRUE(WaitDone(**foreign, 3)) << "the drain never ended";
  EXPECT_TRUE(SeesEnd(r1.get(), 5000));
  EXPECT_TRUE(SeesEnd(r2.get(), 5000));
}

// A peer that closed with records of ours unread leaves ECONNRESET pending
// on the socket, which the kernel reports once, before the queue: the
// drain reads on past it (else what is queued would wait for the socket's
// last reference, which another holder may drop on any thread).
TEST(ForeignFdsTest, DrainGoesPastAPendingReset) {
  auto [a, b] = SeqpacketPair();
  auto [r, w] = Pipe();
  ASSERT_TRUE(Queue(a.get(), "x", std::move(w)));
  ASSERT_TRUE(SendRecord(b.get(), "unread by the peer", {}, false).ok());
  ASSERT_TRUE(StopReceiving(b.get()));
  a.reset();  // closes with our record unread: ECONNRESET on `b`
  absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  (*foreign)->Drain(3, 1000, UniqueFd(::dup(b.get())));  // `b` stays open here
  ASSERT_TRUE(WaitDone(**foreign, 3));
  EXPECT_TRUE(SeesEnd(r.get(), 5000)) << "the drain stopped at the reset";
}

// Destroyed while a sender's file holds its thread: the owner does not wait
// for it (the thread closes what it has, then ends).
TEST(ForeignFdsTest, DestructionDoesNotWaitForAHeldThread) {
  KeepLinger keep;
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  auto [r, w] = Pipe();
  const absl::Time start = absl::Now();
  {
    absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
    ASSERT_TRUE(foreign.ok()) << foreign.status();
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(lingering->sock));
    (*foreign)->Close(1, 1000, std::move(fds));
    std::vector<UniqueFd> more;
    more.push_back(std::move(w));
    (*foreign)->Close(2, 1000, std::move(more));
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(60)) << "waited out the linger";
  lingering->Release();
  EXPECT_TRUE(SeesEnd(r.get(), 10000)) << "what was queued is closed all the same";
}

}  // namespace
}  // namespace halloc
