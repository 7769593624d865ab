// hallocd on Debian 12's own kernel (6.1), which has no SO_PASSRIGHTS: a
// client may attach fds to any record it sends the broker, and the kernel
// cannot refuse them at the sender. The broker must close them off its
// thread: here a TCP socket with SO_LINGER and data its peer never takes,
// whose release would hold whichever thread drops it for the linger time.
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"
#include "halloc/v1/broker.pb.h"
#include "service/daemon.h"
#include "service/util/lingering_socket.h"
#include "service/util/unix_listener.h"

namespace halloc_test {
namespace {

using ::halloc::BrokerConnection;
using ::halloc::ConnectBroker;
using ::halloc::LingeringSocket;
using ::halloc::Record;
using ::halloc::UniqueFd;

bool HasPassRights() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return false;
  UniqueFd a(sv[0]), b(sv[1]);
  return !absl::IsUnimplemented(halloc::RefuseIncomingFds(a.get()));
}

// The guest's init leaves the loopback interface down.
bool LoopbackUp() {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (!s || ::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return false;
  ifr.ifr_flags |= IFF_UP;
  return ::ioctl(s.get(), SIOCSIFFLAGS, &ifr) == 0;
}

absl::Status SendRelease(int sock, const std::vector<int>& fds) {
  halloc::v1::BrokerRequest req;
  req.set_request_id(5);
  req.mutable_release();
  return halloc::SendRecord(sock, req.SerializeAsString(), fds, false);
}

// The next reply's status within `ms` (a Hello skipped).
absl::Status AnswerWithin(int sock, int ms) {
  for (;;) {
    if (absl::Status s = halloc::WaitReadable(sock, ms); !s.ok()) return s;
    absl::StatusOr<Record> rec = halloc::ReceiveRecord(sock, true);
    if (!rec.ok()) return rec.status();
    halloc::v1::BrokerFrame frame;
    if (!frame.ParseFromString(rec->bytes)) return absl::DataLossError("not a frame");
    if (frame.has_reply()) return halloc::ReplyStatus(frame.reply());
  }
}

// hallocd in this process on sockets bound here before it starts (as
// systemd hands them over), so that records can be queued on them first.
class ForeignFdsGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (HasPassRights()) GTEST_SKIP() << "this kernel refuses fds at the sender (SO_PASSRIGHTS)";
    ASSERT_TRUE(LoopbackUp());
    options_ = halloc::testing::TestDaemon::DefaultOptions();
    options_.control_socket = dir_ / "control.sock";
    options_.broker_socket = dir_ / "broker.sock";
  }
  void TearDown() override {
    for (LingeringSocket& l : lingering_) l.Release();
    if (daemon_) daemon_->Shutdown(absl::ZeroDuration());
    daemon_.reset();
  }

  // A listening socket of `type` at `path`, for the daemon to be handed.
  static UniqueFd Bind(const std::string& path, int type) {
    absl::StatusOr<halloc::BoundSocket> listener = halloc::BindUnixSocket(path, type, 0600);
    EXPECT_TRUE(listener.ok()) << listener.status();
    return listener.ok() ? std::move(listener->fd) : UniqueFd();
  }
  // A lingering socket's fd (its listener kept here, released at the end).
  UniqueFd Lingering() {
    absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(absl::Seconds(120));
    EXPECT_TRUE(l.ok()) << l.status();
    if (!l.ok()) return UniqueFd();
    UniqueFd fd = std::move(l->sock);
    lingering_.push_back(*std::move(l));
    return fd;
  }
  void Start(halloc::InheritedListeners inherited) {
    absl::StatusOr<std::unique_ptr<halloc::Daemon>> daemon =
        halloc::Daemon::Start(options_, std::move(inherited));
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
  }

  halloc::testing::TempDir dir_{"foreign"};
  halloc::DaemonOptions options_;
  std::vector<LingeringSocket> lingering_;
  std::unique_ptr<halloc::Daemon> daemon_;
};

// The record with the lingering socket is queued before hallocd serves
// its broker socket (as systemd hands it over), so that the record holds
// the socket's last reference when the broker takes it.
TEST_F(ForeignFdsGuestTest, ALingeringSocketSentToTheBrokerHoldsUpNobody) {
  halloc::InheritedListeners inherited;
  inherited.broker = Bind(options_.broker_socket, SOCK_SEQPACKET);
  absl::StatusOr<UniqueFd> sender = halloc::ConnectSeqpacket(options_.broker_socket);
  ASSERT_TRUE(sender.ok()) << sender.status();
  {
    UniqueFd lingering = Lingering();
    ASSERT_TRUE(SendRelease(sender->get(), {lingering.get()}).ok());
  }  // the record holds its last reference
  Start(std::move(inherited));
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<BrokerConnection> other =
      ConnectBroker(options_.broker_socket, absl::Seconds(20));
  ASSERT_TRUE(other.ok()) << other.status() << " (the broker thread is held)";
  ASSERT_TRUE(SendRelease(other->fd.get(), {}).ok());
  EXPECT_TRUE(AnswerWithin(other->fd.get(), 20000).ok()) << "the broker thread is held";

  // Closed abortively off the broker thread, the socket holds up nobody,
  // its sender included (told to verify first: it never answered its Hello).
  ASSERT_TRUE(SendRelease(sender->get(), {}).ok());
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kUnauthenticated);
}

// A lingering socket nested in flight (queued on a Unix socket that is
// itself sent), which no SO_LINGER hallocd sets can reach: releasing it is
// cut short by the closing thread's tick (util/release_ticker.h) on this
// kernel too, so the sender's next record (read only once its fds are
// closed) is answered and its fd closed long before the 120 s linger.
TEST_F(ForeignFdsGuestTest, ANestedLingeringSocketHoldsNotEvenItsSender) {
  halloc::InheritedListeners inherited;
  inherited.broker = Bind(options_.broker_socket, SOCK_SEQPACKET);
  absl::StatusOr<UniqueFd> sender = halloc::ConnectSeqpacket(options_.broker_socket);
  ASSERT_TRUE(sender.ok()) << sender.status();
  int nest[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, nest), 0);
  UniqueFd outer(nest[0]), carrier(nest[1]);
  {
    UniqueFd lingering = Lingering();
    const int fds[] = {lingering.get()};
    ASSERT_TRUE(halloc::SendRecord(outer.get(), "x", fds, false).ok());
  }  // queued on `carrier`, its last reference
  outer.reset();
  ASSERT_TRUE(SendRelease(sender->get(), {carrier.get()}).ok());
  carrier.reset();  // the record holds it
  int watch[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, watch), 0);
  UniqueFd watched(watch[0]), sent(watch[1]);
  ASSERT_TRUE(SendRelease(sender->get(), {sent.get()}).ok());
  sent.reset();
  Start(std::move(inherited));
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kInvalidArgument);
  // Within hallocd's 10 s verify deadline, which would end the connection
  // (and drop the second record unread) whatever the first one's fate.
  ASSERT_EQ(AnswerWithin(sender->get(), 5000).code(), absl::StatusCode::kInvalidArgument)
      << "the second record was not read: the first one's fds are still closing";
  ASSERT_TRUE(halloc::WaitReadable(watched.get(), 5000).ok()) << "its fd is not closed";
  char c;
  EXPECT_EQ(::recv(watched.get(), &c, 1, MSG_DONTWAIT), 0);
}

// The control socket: gRPC reads through hallocd's relay there, so lingering
// sockets attached to a client's bytes (queued before hallocd serves the
// socket, each record holding its socket's last reference) leave gRPC
// serving. Without the relay each would hold a gRPC thread for 120 s.
TEST_F(ForeignFdsGuestTest, LingeringSocketsSentToTheControlSocketLeaveGrpcServing) {
  halloc::InheritedListeners inherited;
  inherited.control = Bind(options_.control_socket, SOCK_STREAM);
  std::vector<UniqueFd> senders;
  for (int i = 0; i < 8; ++i) {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    absl::StatusOr<sockaddr_un> addr = halloc::UnixAddress(options_.control_socket);
    ASSERT_TRUE(addr.ok()) << addr.status();
    ASSERT_EQ(::connect(s.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
    UniqueFd lingering = Lingering();
    const int fds[] = {lingering.get()};
    ASSERT_TRUE(halloc::SendRecord(s.get(), "P", fds, false).ok());
    senders.push_back(std::move(s));
  }
  Start(std::move(inherited));
  halloc::ConnectOptions connect;
  connect.control_socket = options_.control_socket;
  connect.broker_socket = options_.broker_socket;
  connect.timeout = absl::Seconds(20);
  connect.broker_fast_path = false;  // Allocate as a gRPC call
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(connect);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(client->Stats().ok()) << "gRPC's threads are held";
  absl::StatusOr<halloc::Buffer> buffer = client->Allocate(halloc::BlobDescriptor(4096));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
}

}  // namespace
}  // namespace halloc_test
