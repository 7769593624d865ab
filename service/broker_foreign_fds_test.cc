// Fds a client sends the broker unasked, where the kernel cannot refuse them
// at the sender (before Linux 6.16; here by turning the refusal off): they
// are closed on a thread of their own, never on the broker thread, whose
// other clients are served meanwhile. The file that would hold a thread is
// a TCP socket with SO_LINGER and data its peer never takes
// (util/lingering_socket.h): its release waits out the linger time.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "halloc/v1/broker.pb.h"
#include "service/backend/memfd_backend.h"
#include "service/broker.h"
#include "service/broker_test_util.h"
#include "service/util/foreign_fds.h"
#include "service/util/lingering_socket.h"
#include "service/util/unix_listener.h"

namespace halloc {
namespace {

constexpr absl::Duration kLinger = absl::Seconds(120);

// Records with fds are queued on connections made before the broker serves
// its socket (as systemd hands it over): then the record holds the last
// reference of each fd by the time the broker takes it, so the release of
// a lingering socket would wait on whichever thread drops it. (Sent to a
// running broker, the test's own close could come last and wait instead.)
class BrokerForeignFdsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "broker.sock";
    core_ = std::make_unique<Allocator>(std::make_unique<MemfdBackend>(), Limits());
    absl::StatusOr<BoundSocket> listener = BindUnixSocket(path_, SOCK_SEQPACKET, 0600);
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = std::move(listener->fd);
  }
  void TearDown() override {
    for (LingeringSocket& s : lingering_) s.Release();
    broker_.reset();
    Broker::verify_timeout = saved_verify_timeout_;  // read by the broker thread
  }

  // `disarm`: releases bounded, as hallocd has them; else a socket's
  // linger time holds the closing thread (what these tests hold it with,
  // standing in for a FUSE file whose flush waits for its server).
  void Serve(bool disarm = false) {
    Broker::refuse_fds_at_sender = false;  // as before Linux 6.16
    ForeignFds::bound_releases = disarm;
    absl::StatusOr<std::unique_ptr<Broker>> broker =
        Broker::Serve(std::move(listener_), path_, core_.get());
    Broker::refuse_fds_at_sender = true;
    ForeignFds::bound_releases = true;
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }

  // A lingering socket's fd (the test keeps its listener, to end the wait).
  UniqueFd Lingering() {
    absl::StatusOr<LingeringSocket> s = LingeringSocket::Create(kLinger);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return UniqueFd();
    UniqueFd fd = std::move(s->sock);
    lingering_.push_back(*std::move(s));
    return fd;
  }

  // Sends an empty Release with `fds` on `sock`, then closes the test's
  // references to them.
  static void SendRelease(int sock, std::vector<UniqueFd> fds) {
    v1::BrokerRequest req;
    req.set_request_id(5);
    req.mutable_release();
    std::vector<int> raw;
    for (const UniqueFd& fd : fds) raw.push_back(fd.get());
    ASSERT_TRUE(SendRecord(sock, req.SerializeAsString(), raw, false).ok());
  }

  // The status of the next reply on `sock` within `ms`, skipping a Hello.
  static absl::Status AnswerWithin(int sock, int ms) {
    for (;;) {
      if (absl::Status s = WaitReadable(sock, ms); !s.ok()) return s;
      absl::StatusOr<Record> rec = ReceiveRecord(sock, true);
      if (!rec.ok()) return rec.status();
      v1::BrokerFrame frame;
      if (!frame.ParseFromString(rec->bytes)) return absl::DataLossError("not a frame");
      if (frame.has_reply()) return ReplyStatus(frame.reply());
    }
  }

  // A connection made now: before Serve, it waits in the listener's queue.
  UniqueFd Early() {
    absl::StatusOr<UniqueFd> fd = ConnectSeqpacket(path_);
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *std::move(fd) : UniqueFd();
  }

  absl::StatusOr<BrokerConnection> Connect(absl::Duration timeout = absl::Seconds(10)) {
    return ConnectBroker(path_, timeout);
  }

  testing::TempDir dir_{"broker-foreign"};
  std::string path_;
  UniqueFd listener_;
  std::unique_ptr<Allocator> core_;
  std::unique_ptr<Broker> broker_;
  std::vector<LingeringSocket> lingering_;
  const absl::Duration saved_verify_timeout_ = Broker::verify_timeout;
};

// The sender is told its record was malformed, and is not read again until
// its fds are closed; everyone else is served meanwhile.
TEST_F(BrokerForeignFdsTest, AreClosedOffTheBrokerThread) {
  UniqueFd sender = Early();
  std::vector<UniqueFd> fds;
  fds.push_back(Lingering());
  SendRelease(sender.get(), std::move(fds));
  Serve();
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kInvalidArgument);

  // Served while the sender's socket lingers (the broker thread would wait
  // out kLinger releasing it).
  absl::StatusOr<BrokerConnection> other = Connect();
  ASSERT_TRUE(other.ok()) << other.status();
  SendRelease(other->fd.get(), {});
  EXPECT_TRUE(AnswerWithin(other->fd.get(), 10000).ok());

  // The sender waits for its fds to be closed (then it is told to verify:
  // it never answered its Hello).
  SendRelease(sender.get(), {});
  EXPECT_EQ(AnswerWithin(sender.get(), 300).code(), absl::StatusCode::kDeadlineExceeded);
  lingering_[0].Release();
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kUnauthenticated);
}

// As hallocd runs: the lingering socket is closed abortively, so it holds
// up nobody, its sender included.
TEST_F(BrokerForeignFdsTest, ALingeringSocketHoldsNothing) {
  UniqueFd sender = Early();
  std::vector<UniqueFd> fds;
  fds.push_back(Lingering());
  SendRelease(sender.get(), std::move(fds));
  Serve(/*disarm=*/true);
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kInvalidArgument);
  SendRelease(sender.get(), {});
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kUnauthenticated);
}

// Once kMaxForeignFdsPerUid of a uid's fds wait, none of its connections
// is read until they are closed, and no new one is admitted.
TEST_F(BrokerForeignFdsTest, TooManyWaitingPauseTheWholeUid) {
  UniqueFd sender = Early();
  UniqueFd other = Early();
  std::vector<UniqueFd> fds;
  fds.push_back(Lingering());
  while (fds.size() < Broker::kMaxForeignFdsPerUid) fds.emplace_back(::dup(other.get()));
  SendRelease(sender.get(), std::move(fds));
  Serve();
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kInvalidArgument);

  SendRelease(other.get(), {});
  EXPECT_EQ(AnswerWithin(other.get(), 300).code(), absl::StatusCode::kDeadlineExceeded);
  absl::StatusOr<BrokerConnection> refused = Connect(absl::Seconds(10));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();

  lingering_[0].Release();
  EXPECT_EQ(AnswerWithin(other.get(), 10000).code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<BrokerConnection> after = Connect();
  EXPECT_TRUE(after.ok()) << after.status();
}

// A uid refused for its fds waiting (one of them held by its sender's
// file) keeps connecting with records with fds queued: those are dropped
// while its held close still waits, on a lane of their own. Before, each
// refused socket waited behind the held close (+1 fd of hallocd's each,
// with no bound per uid), until kMaxForeignFds stopped hallocd accepting
// anyone.
TEST_F(BrokerForeignFdsTest, ARefusedConnectionsQueuedFdsDoNotWaitForTheUidsHeldClose) {
  UniqueFd sender = Early();
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  std::vector<UniqueFd> fds;
  fds.push_back(Lingering());
  while (fds.size() < Broker::kMaxForeignFdsPerUid) fds.emplace_back(::dup(null.get()));
  SendRelease(sender.get(), std::move(fds));
  // Behind it in the listener's queue, each with a record carrying a pipe's
  // only write end: accepted once the sender's record put the uid over its
  // share, each is refused with its record still queued (one accepted
  // before that is paused unread, then closed at its verify deadline; one
  // read before that has its fds closed before the held one).
  Broker::verify_timeout = absl::Milliseconds(300);  // until TearDown
  std::vector<UniqueFd> conns, ends;
  for (int i = 0; i < 20; ++i) {
    conns.push_back(Early());
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd w(p[1]);
    ends.emplace_back(p[0]);
    const int one[] = {w.get()};
    ASSERT_TRUE(SendRecord(conns.back().get(), "x", one, false).ok());
  }
  Serve();
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kInvalidArgument);
  for (const UniqueFd& r : ends) {
    pollfd p{r.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 10000), 1) << "a refused socket's fds wait for the held close";
    char c;
    EXPECT_EQ(::read(r.get(), &c, 1), 0);
  }
}

// A memfd backend whose allocations, once `hold` is set, say they began
// and wait for `open`: a small (inline) one holds the broker thread.
class HeldBackend : public MemfdBackend {
 public:
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (hold.load()) {
      entered.Notify();
      open.WaitForNotification();
    }
    return MemfdBackend::Allocate(r);
  }
  std::atomic<bool> hold{false};
  absl::Notification entered, open;
};

// Records of one uid that become readable together reach the broker in one
// epoll batch: once the first puts the uid over its share, the others are
// not read in that batch either (Pause takes a connection out of the epoll
// set, not out of the events already returned). Before, every one was read
// and its fds taken: one uid could fill the whole kMaxForeignFds, and then
// nobody was admitted.
TEST_F(BrokerForeignFdsTest, AUidPausedInABatchIsNotReadFurtherInIt) {
  auto backend = std::make_unique<HeldBackend>();
  HeldBackend* held = backend.get();
  core_ = std::make_unique<Allocator>(std::move(backend), Limits());
  Serve();
  absl::StatusOr<BrokerConnection> asker = Connect();
  ASSERT_TRUE(asker.ok()) << asker.status();
  constexpr int kSenders = 6;
  std::vector<UniqueFd> senders;
  for (int i = 0; i < kSenders; ++i) {
    senders.push_back(Early());
    ASSERT_TRUE(WaitReadable(senders.back().get(), 10000).ok());
    ASSERT_TRUE(ReceiveRecord(senders.back().get(), false).ok());  // its Hello
  }
  // The broker thread is held in an allocation while every record arrives.
  held->hold = true;
  std::thread alloc([&] {
    size_t fds = 0;
    EXPECT_TRUE(AllocateOn(asker->fd.get(), 4096, &fds).ok());
  });
  ASSERT_TRUE(held->entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  held->hold = false;
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  for (const UniqueFd& s : senders) {
    std::vector<UniqueFd> fds;
    fds.push_back(Lingering());  // holds the uid's lane: all stay waiting
    while (fds.size() < Broker::kMaxForeignFdsPerUid) fds.emplace_back(::dup(null.get()));
    SendRelease(s.get(), std::move(fds));
  }
  held->open.Notify();
  alloc.join();
  int answered = 0;
  for (const UniqueFd& s : senders) {
    answered += AnswerWithin(s.get(), 500).code() == absl::StatusCode::kInvalidArgument;
  }
  EXPECT_EQ(answered, 1) << "records read after their uid was paused";
}

// A connection that ends with records with fds still queued (here: one
// that never verified, closed at its deadline while paused) has them
// closed off the broker thread too: closing its socket there would drop
// them there.
TEST_F(BrokerForeignFdsTest, AConnectionClosedWithFdsQueuedIsDrainedOffTheBrokerThread) {
  UniqueFd sender = Early();
  for (int i = 0; i < 2; ++i) {
    std::vector<UniqueFd> fds;
    fds.push_back(Lingering());
    SendRelease(sender.get(), std::move(fds));
  }
  Broker::verify_timeout = absl::Milliseconds(300);  // until TearDown
  Serve();
  EXPECT_EQ(AnswerWithin(sender.get(), 10000).code(), absl::StatusCode::kInvalidArgument);

  // The deadline passes while the second record waits; the broker serves on.
  absl::SleepFor(absl::Seconds(1));
  absl::StatusOr<BrokerConnection> other = Connect();
  ASSERT_TRUE(other.ok()) << other.status();
  SendRelease(other->fd.get(), {});
  EXPECT_TRUE(AnswerWithin(other->fd.get(), 10000).ok());
  ASSERT_TRUE(WaitReadable(sender.get(), 10000).ok()) << "never closed";
  char c;
  EXPECT_EQ(::recv(sender.get(), &c, 1, MSG_DONTWAIT), 0) << "closed at its deadline";
}

}  // namespace
}  // namespace halloc
