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
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/testing/test_daemon.h"
#include "service/daemon.h"
#include "service/util/unix_listener.h"
#include "gtest/gtest.h"
#include "halloc/v1/broker.pb.h"
#include "service/util/lingering_socket.h"

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

// The record with the lingering socket is queued before hallocd serves
// its broker socket (as systemd hands it over), so that the record holds
// the socket's last reference when the broker takes it.
TEST(ForeignFdsGuestTest, ALingeringSocketSentToTheBrokerHoldsUpNobody) {
  if (HasPassRights()) GTEST_SKIP() << "this kernel refuses fds at the sender (SO_PASSRIGHTS)";
  ASSERT_TRUE(LoopbackUp());
  char tmpl[] = "/tmp/halloc-foreign-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  halloc::DaemonOptions options = halloc::testing::TestDaemon::DefaultOptions();
  options.control_socket = dir + "/control.sock";
  options.broker_socket = dir + "/broker.sock";
  halloc::InheritedListeners inherited;
  absl::StatusOr<UniqueFd> listener =
      halloc::BindUnixSocket(options.broker_socket, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  inherited.broker = *std::move(listener);

  absl::StatusOr<UniqueFd> sender = halloc::ConnectSeqpacket(options.broker_socket);
  ASSERT_TRUE(sender.ok()) << sender.status();
  absl::StatusOr<LingeringSocket> lingering = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(lingering.ok()) << lingering.status();
  ASSERT_TRUE(SendRelease(sender->get(), {lingering->sock.get()}).ok());
  lingering->sock.reset();  // the record holds its last reference

  absl::StatusOr<std::unique_ptr<halloc::Daemon>> daemon =
      halloc::Daemon::Start(options, std::move(inherited));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<BrokerConnection> other =
      ConnectBroker(options.broker_socket, absl::Seconds(20));
  ASSERT_TRUE(other.ok()) << other.status() << " (the broker thread is held)";
  ASSERT_TRUE(SendRelease(other->fd.get(), {}).ok());
  EXPECT_TRUE(AnswerWithin(other->fd.get(), 20000).ok()) << "the broker thread is held";

  // Closed abortively off the broker thread, the socket holds up nobody,
  // its sender included (told to verify first: it never answered its Hello).
  ASSERT_TRUE(SendRelease(sender->get(), {}).ok());
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kUnauthenticated);
  lingering->Release();
  (*daemon)->Shutdown(absl::ZeroDuration());
  daemon->reset();
  std::filesystem::remove_all(dir);
}

// The control socket: gRPC reads through hallocd's relay there, so lingering
// sockets attached to a client's bytes (queued before hallocd serves the
// socket, each record holding its socket's last reference) leave gRPC
// serving. Without the relay each would hold a gRPC thread for 120 s.
TEST(ForeignFdsGuestTest, LingeringSocketsSentToTheControlSocketLeaveGrpcServing) {
  if (HasPassRights()) GTEST_SKIP() << "this kernel refuses fds at the sender (SO_PASSRIGHTS)";
  ASSERT_TRUE(LoopbackUp());
  char tmpl[] = "/tmp/halloc-foreign-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  halloc::DaemonOptions options = halloc::testing::TestDaemon::DefaultOptions();
  options.control_socket = dir + "/control.sock";
  options.broker_socket = dir + "/broker.sock";
  halloc::InheritedListeners inherited;
  absl::StatusOr<UniqueFd> listener =
      halloc::BindUnixSocket(options.control_socket, SOCK_STREAM, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  inherited.control = *std::move(listener);

  std::vector<UniqueFd> senders;
  std::vector<LingeringSocket> lingering;
  for (int i = 0; i < 8; ++i) {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    absl::StatusOr<sockaddr_un> addr = halloc::UnixAddress(options.control_socket);
    ASSERT_TRUE(addr.ok()) << addr.status();
    ASSERT_EQ(::connect(s.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
    absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(absl::Seconds(120));
    ASSERT_TRUE(l.ok()) << l.status();
    const int fds[] = {l->sock.get()};
    ASSERT_TRUE(halloc::SendRecord(s.get(), "P", fds, false).ok());
    l->sock.reset();
    senders.push_back(std::move(s));
    lingering.push_back(*std::move(l));
  }

  absl::StatusOr<std::unique_ptr<halloc::Daemon>> daemon =
      halloc::Daemon::Start(options, std::move(inherited));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  halloc::ConnectOptions connect;
  connect.control_socket = options.control_socket;
  connect.broker_socket = options.broker_socket;
  connect.timeout = absl::Seconds(20);
  connect.broker_fast_path = false;  // Allocate as a gRPC call
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(connect);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(client->Stats().ok()) << "gRPC's threads are held";
  absl::StatusOr<halloc::Buffer> buffer = client->Allocate(halloc::BlobDescriptor(4096));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  for (LingeringSocket& l : lingering) l.Release();
  (*daemon)->Shutdown(absl::ZeroDuration());
  daemon->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace halloc_test
