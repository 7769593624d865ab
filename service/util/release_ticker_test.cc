#include "service/util/release_ticker.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/util/lingering_socket.h"

namespace halloc {
namespace {

// A seqpacket pair whose receiving end (second) holds, queued, a record
// carrying a socket that lingers `linger`, its only reference: whoever
// drops that record's fds waits out the linger (unless interrupted).
std::pair<UniqueFd, LingeringSocket> QueuedLinger(absl::Duration linger) {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(linger);
  EXPECT_TRUE(l.ok()) << l.status();
  if (!l.ok()) return {};
  const int fds[] = {l->sock.get()};
  EXPECT_TRUE(SendRecord(a.get(), "x", fds, false).ok());
  l->sock.reset();
  return {std::move(b), *std::move(l)};
}

// The stand-in holds: with nothing armed, the close waits out the linger.
TEST(ReleaseTickerTest, WithoutTicksAQueuedLingeringSocketHoldsTheClose) {
  auto [b, lingering] = QueuedLinger(absl::Seconds(2));
  ASSERT_TRUE(b);
  const absl::Time start = absl::Now();
  b.reset();
  EXPECT_GE(absl::Now() - start, absl::Seconds(1));
}

TEST(ReleaseTickerTest, AClosedSocketsQueuedLingeringSocketDoesNotHoldTheClose) {
  absl::StatusOr<std::unique_ptr<ReleaseTicker>> ticker =
      ReleaseTicker::ForThisThread(absl::Milliseconds(1));
  ASSERT_TRUE(ticker.ok()) << ticker.status();
  auto [b, lingering] = QueuedLinger(absl::Seconds(60));
  ASSERT_TRUE(b);
  const absl::Time start = absl::Now();
  {
    ReleaseTicker::Armed armed(ticker->get());
    b.reset();
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "waited out the linger";
}

// A receive with no room for fds drops them (the kernel releases them on
// this thread, never installing them): one tick, not the linger. (With
// SO_PASSCRED the credentials fill the room ReceiveMessage always gives.)
TEST(ReleaseTickerTest, AReceiveThatDropsALingeringSocketDoesNotWaitItOut) {
  absl::StatusOr<std::unique_ptr<ReleaseTicker>> ticker =
      ReleaseTicker::ForThisThread(absl::Milliseconds(1));
  ASSERT_TRUE(ticker.ok()) << ticker.status();
  auto [b, lingering] = QueuedLinger(absl::Seconds(60));
  ASSERT_TRUE(b);
  const int on = 1;
  ASSERT_EQ(::setsockopt(b.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  const absl::Time start = absl::Now();
  Ancillary anc;
  ssize_t n;
  {
    ReleaseTicker::Armed armed(ticker->get());
    char c;
    n = ReceiveMessage(b.get(), absl::MakeSpan(&c, 1), MSG_DONTWAIT, 0, anc);
  }
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(anc.fds_cut);
  EXPECT_TRUE(anc.fds.empty());
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "waited out the linger";
}

// Only the thread that made the ticker is signalled: this one's blocking
// read (the main thread, where a signal sent to the process would most
// likely land) goes on undisturbed while another thread's ticks arrive
// (they do: they end that thread's own wait).
TEST(ReleaseTickerTest, OtherThreadsAreNotInterrupted) {
  int p[2], q[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(q, O_CLOEXEC), 0);
  UniqueFd r(p[0]), w(p[1]), never_r(q[0]), never_w(q[1]);  // nothing is written to q
  std::atomic<int> ticks_armed{0};
  std::atomic<int> own_wait{-1};  // how the ticking thread's wait ended: errno, or 0
  std::thread ticking([&] {
    absl::StatusOr<std::unique_ptr<ReleaseTicker>> ticker =
        ReleaseTicker::ForThisThread(absl::Milliseconds(1));
    if (ticker.ok()) {
      ReleaseTicker::Armed armed(ticker->get());
      ticks_armed = 1;
      // Nothing comes on q: only a tick ends this wait (poll is never
      // restarted after a handler), else it times out after 10 s.
      pollfd pfd{never_r.get(), POLLIN, 0};
      const int n = ::poll(&pfd, 1, 10000);
      own_wait = n < 0 ? errno : 0;
      absl::SleepFor(absl::Milliseconds(200));  // ticks go on meanwhile
    }
    (void)!::write(w.get(), "x", 1);
  });
  char c;
  const ssize_t got = ::read(r.get(), &c, 1);
  const int error = got < 0 ? errno : 0;
  ticking.join();
  ASSERT_EQ(ticks_armed.load(), 1) << "no ticker";
  EXPECT_EQ(own_wait.load(), EINTR) << "the ticking thread's own wait was not interrupted";
  EXPECT_EQ(got, 1) << "read interrupted: errno " << error;
}

}  // namespace
}  // namespace halloc
