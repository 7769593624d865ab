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

// Sockets are closed as they would be (lingering) while one lives: the one
// kind of file whose close these tests can make wait.
class KeepLinger {
 public:
  KeepLinger() { ForeignFds::disarm_sockets = false; }
  ~KeepLinger() { ForeignFds::disarm_sockets = true; }
};

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

  // Drained on the thread: the record's fds are closed there (the lock
  // goes with the installed fd's close, the pipe's write end with it).
  absl::StatusOr<std::unique_ptr<ForeignFds>> foreign = ForeignFds::Create(16, 1000);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  (*foreign)->Drain(3, 1000, UniqueFd(::dup(b.get())));
  ASSERT_TRUE(WaitDone(**foreign, 3));
  EXPECT_TRUE(SeesEnd(r.get(), 5000));
  EXPECT_FALSE(OthersSeeOurLock(path));
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
  foreign.Close(9, 1001, std::move(third));
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
  const int first[] = {w1.get()};
  const int second[] = {w2.get()};
  ASSERT_TRUE(SendRecord(a.get(), "x", first, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "", {}, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "", second, false).ok());
  ASSERT_TRUE(SendRecord(a.get(), "", {}, false).ok());
  w1.reset();
  w2.reset();
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
