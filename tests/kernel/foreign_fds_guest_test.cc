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
TEST(ForeignFdsGuestTest, ALingeringSocketSentToTheBrokerHoldsUpOnlyItsSender) {
  {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd a(sv[0]), b(sv[1]);
    absl::Status refuse = halloc::RefuseIncomingFds(a.get());
    if (!absl::IsUnimplemented(refuse)) {
      GTEST_SKIP() << "this kernel refuses fds at the sender (SO_PASSRIGHTS): " << refuse;
    }
  }
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

  ASSERT_TRUE(SendRelease(sender->get(), {}).ok());
  EXPECT_EQ(AnswerWithin(sender->get(), 300).code(), absl::StatusCode::kDeadlineExceeded);
  lingering->Release();
  // Read again once the socket is closed (and told to verify first).
  EXPECT_EQ(AnswerWithin(sender->get(), 20000).code(), absl::StatusCode::kUnauthenticated);
  (*daemon)->Shutdown(absl::ZeroDuration());
  daemon->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace halloc_test
