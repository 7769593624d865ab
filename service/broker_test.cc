// The broker on its own: serving a socket it was handed (systemd socket
// activation) as well as one it binds.
#include "service/broker.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/broker_test_util.h"
#include "service/util/unix_listener.h"

namespace halloc {
namespace {

class BrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    core_ = std::make_unique<Allocator>(std::make_unique<MemfdBackend>(), Limits());
  }

  // A socket of `type` bound to `path`, listening unless `listen` is false.
  UniqueFd Bound(const std::string& path, int type, bool listen = true) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
    EXPECT_TRUE(addr.ok());
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
    if (listen) EXPECT_EQ(::listen(fd.get(), 16), 0);
    return fd;
  }

  testing::TempDir dir_{"broker-test"};
  std::unique_ptr<Allocator> core_;
};

TEST_F(BrokerTest, ServesAPassedSocketAndLeavesItsPathAlone) {
  const std::string path = dir_ / "broker.sock";
  // As systemd makes it: blocking, no SO_PASSCRED (the unit may omit it).
  absl::StatusOr<std::unique_ptr<Broker>> broker =
      Broker::Serve(Bound(path, SOCK_SEQPACKET), path, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT(c->welcome.session_id(), 0u);
  EXPECT_EQ(c->welcome.session_token().size(), 32u);
  EXPECT_FALSE(c->welcome.live_revoke()) << "memfd: a revoke leaves imported fds valid";
  EXPECT_EQ(core_->Stats().sessions(), 1u);
  (*broker)->Stop();
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << "the passed socket's path is its owner's";
}

// systemd starts hallocd because a client connected: that connection was
// made before hallocd could set SO_PASSCRED (and since Linux 6.16 a
// connection takes it from the listener at connect()). Its records must be
// stamped all the same.
TEST_F(BrokerTest, AConnectionMadeBeforeServeIsStampedToo) {
  const std::string path = dir_ / "broker.sock";
  UniqueFd listener = Bound(path, SOCK_SEQPACKET);
  absl::StatusOr<UniqueFd> early = ConnectSeqpacket(path);
  ASSERT_TRUE(early.ok()) << early.status();
  absl::StatusOr<std::unique_ptr<Broker>> broker =
      Broker::Serve(std::move(listener), path, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = Handshake(*std::move(early), absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT(c->welcome.session_id(), 0u);
}

TEST_F(BrokerTest, ABoundSocketsPathIsRemovedAtStop) {
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  ASSERT_TRUE(ConnectBroker(path, absl::Seconds(5)).ok());
  (*broker)->Stop();
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0);
}

TEST_F(BrokerTest, RefusesAPassedSocketOfTheWrongKind) {
  const std::string stream = dir_ / "stream.sock";
  absl::StatusOr<std::unique_ptr<Broker>> b =
      Broker::Serve(Bound(stream, SOCK_STREAM), stream, core_.get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("SOCK_SEQPACKET"), std::string::npos);

  const std::string idle = dir_ / "idle.sock";
  b = Broker::Serve(Bound(idle, SOCK_SEQPACKET, /*listen=*/false), idle, core_.get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);

  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  UniqueFd other(pair[1]);
  b = Broker::Serve(UniqueFd(pair[0]), "socketpair", core_.get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);

  b = Broker::Serve(UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)), "/dev/null",
                    core_.get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
}

// One fast-path request (an empty Release) sent from CPU `cpu_hint` - 1;
// its reply's status.
absl::Status ReleaseNothingFrom(int sock, uint32_t cpu_hint) {
  v1::BrokerRequest req;
  req.set_request_id(1);
  req.set_cpu(cpu_hint);
  req.mutable_release();
  if (absl::Status s = SendRecord(sock, req.SerializeAsString(), {}, false); !s.ok()) {
    return s;
  }
  absl::StatusOr<Record> rec = ReceiveRecord(sock, false);
  if (!rec.ok()) return rec.status();
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(rec->bytes) || !frame.has_reply()) {
    return absl::DataLossError("not a reply");
  }
  return ReplyStatus(frame.reply());
}

// No request carries fds. Refused at the sender where the kernel can
// (SO_PASSRIGHTS, 6.16+), else answered as malformed (and closed off the
// broker thread, where a client's file could park it:
// broker_foreign_fds_test.cc).
TEST_F(BrokerTest, ARecordWithFdsIsRefusedOrAnswered) {
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<UniqueFd> raw = ConnectSeqpacket(path);  // no handshake
  ASSERT_TRUE(raw.ok()) << raw.status();
  v1::BrokerRequest req;
  req.set_request_id(7);
  req.mutable_release();
  const int fds[] = {raw->get()};
  absl::Status sent = SendRecord(raw->get(), req.SerializeAsString(), fds, false);
  if (absl::Status refuse = RefuseIncomingFds(raw->get()); !absl::IsUnimplemented(refuse)) {
    EXPECT_EQ(sent.code(), absl::StatusCode::kPermissionDenied) << sent;
  } else {
    ASSERT_TRUE(sent.ok()) << sent;
    // The Hello comes first, then the answer to the record.
    absl::Status answer = absl::DeadlineExceededError("no reply");
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<Record> rec = ReceiveRecord(raw->get(), false);
      ASSERT_TRUE(rec.ok()) << rec.status();
      v1::BrokerFrame frame;
      ASSERT_TRUE(frame.ParseFromString(rec->bytes));
      if (frame.has_reply()) {
        answer = ReplyStatus(frame.reply());
        break;
      }
    }
    EXPECT_EQ(answer.code(), absl::StatusCode::kInvalidArgument) << answer;
  }
  // The broker serves on.
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(ReleaseNothingFrom(c->fd.get(), 0).ok());
}

// A connection made before hallocd serves its socket (while systemd holds
// it) took SO_PASSRIGHTS on from the listener, before the broker turned it
// off there: the broker turns it off on each connection it accepts too.
TEST_F(BrokerTest, AConnectionMadeBeforeServeRefusesFdsToo) {
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<BoundSocket> listener = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<UniqueFd> early = ConnectSeqpacket(path);
  ASSERT_TRUE(early.ok()) << early.status();
  if (absl::IsUnimplemented(RefuseIncomingFds(listener->fd.get()))) {
    GTEST_SKIP() << "this kernel has no SO_PASSRIGHTS (Linux 6.16+): records with fds "
                    "are answered as malformed (ARecordWithFdsIsRefusedOrAnswered)";
  }
  absl::StatusOr<std::unique_ptr<Broker>> broker =
      Broker::Serve(std::move(listener->fd), path, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  ASSERT_TRUE(WaitReadable(early->get(), 10000).ok());  // its Hello: accepted
  ASSERT_TRUE(ReceiveRecord(early->get(), false).ok());
  v1::BrokerRequest req;
  req.mutable_release();
  const int fds[] = {early->get()};
  EXPECT_EQ(SendRecord(early->get(), req.SerializeAsString(), fds, false).code(),
            absl::StatusCode::kPermissionDenied);
}

// The kernel charges unread fds in flight to hallocd's user and, past its
// fd limit, refuses all of hallocd's fd sends: a client that asks and does
// not read is refused itself, once its uid's share is unread, with a
// reason; served again once it has read.
TEST_F(BrokerTest, AClientThatDoesNotReadItsFdsIsRefusedMore) {
  Broker::max_unread_fds_per_uid = 4;
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  Broker::max_unread_fds_per_uid = 0;
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  // Bytes of the records queued for the client, unread (SEQPACKET: all).
  auto queued = [&] {
    int bytes = 0;
    EXPECT_EQ(::ioctl(c->fd.get(), SIOCINQ, &bytes), 0);
    return bytes;
  };
  // Asks for three buffers, and waits until the answer is there (unread).
  auto allocate_three = [&](uint64_t id) {
    const int before = queued();
    v1::BrokerRequest req;
    req.set_request_id(id);
    req.mutable_allocate()->mutable_desc()->set_size(4096);
    req.mutable_allocate()->mutable_desc()->set_name("unread");
    req.mutable_allocate()->set_count(3);
    ASSERT_TRUE(SendRecord(c->fd.get(), req.SerializeAsString(), {}, false).ok());
    const absl::Time until = absl::Now() + absl::Seconds(5);
    while (queued() == before) {
      ASSERT_LT(absl::Now(), until) << "no answer to request " << id;
      absl::SleepFor(absl::Milliseconds(1));
    }
  };
  auto answer = [&](size_t* fds) -> absl::Status {
    absl::StatusOr<Record> rec = ReceiveRecord(c->fd.get(), false);
    if (!rec.ok()) return rec.status();
    v1::BrokerFrame frame;
    if (!frame.ParseFromString(rec->bytes) || !frame.has_reply()) {
      return absl::DataLossError("not a reply");
    }
    *fds = rec->fds.size();
    return ReplyStatus(frame.reply());
  };
  allocate_three(1);
  size_t fds = 0;
  {
    // A second answer while the first is unread: 3 + 3 > 4.
    allocate_three(2);
    ASSERT_TRUE(answer(&fds).ok());
    EXPECT_EQ(fds, 3u);
    absl::Status refused = answer(&fds);
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_NE(refused.message().find("still unread"), std::string::npos) << refused;
    EXPECT_EQ(fds, 0u);
  }
  // Everything read: served again (once its sockets may be looked at
  // again: UnreadFds::kRefreshEvery).
  absl::SleepFor(2 * UnreadFds::kRefreshEvery);
  allocate_three(3);
  EXPECT_TRUE(answer(&fds).ok());
  EXPECT_EQ(fds, 3u);
}

// This process's open fds.
int OpenFds() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// A connection that ends with a reply's fd still unread keeps its socket
// (UnreadFds::Retire) until its peer closes; then it goes, even when
// nothing else happens on the broker afterwards. (It stayed open when the
// connection ended within 100 ms of the broker's last sweep: the loop
// slept with no timeout, counting no retired socket.)
TEST_F(BrokerTest, AConnectionEndedWithFdsUnreadIsLetGoOnceItsPeerCloses) {
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  const int before = OpenFds();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  v1::BrokerRequest req;
  req.set_request_id(1);
  req.mutable_allocate()->mutable_desc()->set_size(4096);
  ASSERT_TRUE(SendRecord(c->fd.get(), req.SerializeAsString(), {}, false).ok());
  ASSERT_TRUE(WaitReadable(c->fd.get(), 5000).ok());  // the reply, with its fd: unread
  // The end, seen by the broker while the reply is still queued here.
  ASSERT_EQ(::shutdown(c->fd.get(), SHUT_WR), 0);
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (core_->Stats().sessions() > 0) {
    ASSERT_LT(absl::Now(), until) << "the broker never saw the end";
    absl::SleepFor(absl::Milliseconds(1));
  }
  c->fd.reset();  // the unread reply goes with it
  const absl::Time gone = absl::Now() + absl::Seconds(5);
  while (OpenFds() > before && absl::Now() < gone) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(OpenFds(), before) << "the ended connection's socket is still open";
}

// Broker::lone_pause for one test: long enough that a test thread starved
// between two requests is not taken for a client that paused.
class LonePause {
 public:
  explicit LonePause(absl::Duration d) : saved_(Broker::lone_pause) { Broker::lone_pause = d; }
  ~LonePause() { Broker::lone_pause = saved_; }

 private:
  const absl::Duration saved_;
};

TEST_F(BrokerTest, ALoneClientIsAnsweredFromItsOwnCpu) {
  cpu_set_t ours;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(ours), &ours), 0);
  if (CPU_COUNT(&ours) < 2) GTEST_SKIP() << "one CPU only: there is nothing to follow";
  LonePause pause(absl::Seconds(2));
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  // Its first request: not yet a lone client (nothing before it).
  ASSERT_TRUE(ReleaseNothingFrom(c->fd.get(), 1).ok());
  EXPECT_EQ((*broker)->held_cpu(), -1);
  int last = -1;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &ours)) continue;
    ASSERT_TRUE(ReleaseNothingFrom(c->fd.get(), static_cast<uint32_t>(cpu) + 1).ok());
    EXPECT_EQ((*broker)->held_cpu(), cpu);
    last = cpu;
  }
  // Unknown, or not a CPU hallocd may use: served all the same, not followed.
  for (uint32_t hint : {0u, static_cast<uint32_t>(CPU_SETSIZE) + 1, 0xffffffffu}) {
    EXPECT_TRUE(ReleaseNothingFrom(c->fd.get(), hint).ok()) << hint;
    EXPECT_EQ((*broker)->held_cpu(), last) << hint;
  }
  // A client that pauses is let go (after lone_pause).
  const absl::Time until = absl::Now() + absl::Seconds(20);
  // (Published one after the other: both are waited for.)
  while ((*broker)->held_cpu() != -1 || ServingCpu().load() != -1) {
    ASSERT_LT(absl::Now(), until) << "still held on cpu " << (*broker)->held_cpu()
                                  << ", serving from " << ServingCpu().load();
    absl::SleepFor(absl::Milliseconds(10));
  }
}

TEST_F(BrokerTest, ClientsTakingTurnsAreNotFollowed) {
  cpu_set_t ours;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(ours), &ours), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &ours)) ++cpu;
  LonePause pause(absl::Seconds(2));
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> a = ConnectBroker(path, absl::Seconds(5));
  absl::StatusOr<BrokerConnection> b = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(ReleaseNothingFrom((i % 2 ? a : b)->fd.get(), static_cast<uint32_t>(cpu) + 1).ok());
    EXPECT_EQ((*broker)->held_cpu(), -1) << i;
  }
  // One of them alone for two requests in a row: followed; the other one
  // next: let go.
  ASSERT_TRUE(ReleaseNothingFrom(a->fd.get(), static_cast<uint32_t>(cpu) + 1).ok());
  ASSERT_TRUE(ReleaseNothingFrom(a->fd.get(), static_cast<uint32_t>(cpu) + 1).ok());
  if (CPU_COUNT(&ours) >= 2) EXPECT_EQ((*broker)->held_cpu(), cpu);
  ASSERT_TRUE(ReleaseNothingFrom(b->fd.get(), static_cast<uint32_t>(cpu) + 1).ok());
  EXPECT_EQ((*broker)->held_cpu(), -1);
}

TEST_F(BrokerTest, FollowingCanBeTurnedOff) {
  const std::string path = dir_ / "broker.sock";
  Broker::follow_client_cpu = false;
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  Broker::follow_client_cpu = true;
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(ReleaseNothingFrom(c->fd.get(), 1).ok());
  ASSERT_TRUE(ReleaseNothingFrom(c->fd.get(), 1).ok());
  EXPECT_EQ((*broker)->held_cpu(), -1);
}

// Connections that verify or close within the verify timeout leave no
// deadline queued behind them for the rest of it (a loop of connect and
// close would otherwise grow the broker's queue for 10 s at a time); those
// still in their handshake keep theirs.
TEST_F(BrokerTest, EndedHandshakesLeaveNoDeadlinesQueued) {
  const std::string path = dir_ / "broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  for (int i = 0; i < 300; ++i) {
    if (i % 2 == 0) {
      absl::StatusOr<UniqueFd> c = ConnectSeqpacket(path);
      ASSERT_TRUE(c.ok()) << c.status();
      ASSERT_TRUE(WaitReadable(c->get(), 5000).ok());  // accepted: its Hello came
    } else {
      absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
      ASSERT_TRUE(c.ok()) << c.status();
    }
  }
  std::vector<UniqueFd> waiting;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<UniqueFd> c = ConnectSeqpacket(path);
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE(WaitReadable(c->get(), 5000).ok());
    waiting.push_back(*std::move(c));
  }
  // At most twice the live handshakes (100, or a few more while the
  // broker has not seen the last closes) and the slack of 64.
  EXPECT_GE((*broker)->queued_deadlines(), 100u);
  EXPECT_LE((*broker)->queued_deadlines(), 2 * 110u + 64);
  // The 100 waiting are still in their handshake: answered once they verify.
  absl::StatusOr<BrokerConnection> late = Handshake(std::move(waiting.back()), absl::Seconds(5));
  EXPECT_TRUE(late.ok()) << late.status();
}

}  // namespace
}  // namespace halloc
