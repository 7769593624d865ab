#include "service/grpc_listener.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "service/connect_as_testing.h"
#include "service/connection_limits.h"
#include "service/http2_testing.h"
#include "service/util/grpc_log.h"
#include "service/util/lingering_socket.h"
#include "service/util/log_lines_testing.h"
#include "service/util/unix_listener.h"

namespace halloc {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class AlwaysServing final : public Health::Service {
  grpc::Status Check(grpc::ServerContext*, const HealthCheckRequest*,
                     HealthCheckResponse* resp) override {
    resp->set_status(HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
};

// Waits (bounded) for `done`; the listener's thread catches up on its own.
template <typename F>
bool WaitFor(F done) {
  for (int i = 0; i < 2000; ++i) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

// Each case runs with connections handed to gRPC directly (where the kernel
// refuses fds at the sender) and through a StreamRelay (as before 6.16).
using http2_testing::EmptyCall;
using http2_testing::Frame;
using http2_testing::kPreface;
using http2_testing::kSettings;
using http2_testing::kWindowUpdate;
using http2_testing::Literal;

// Each parameterized case's name: how its connections reach gRPC.
std::string DirectOrRelayed(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "Relayed" : "Direct";
}

// For a forked child (syscalls only): uid and gid 65534, or _exit(1) (the
// parent skips: it cannot switch uids here).
void ChildBecomeNobody() {
  if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
    ::_exit(1);
  }
}

// For a forked child (syscalls only): a connection to `addr`, or _exit(2).
int ChildConnect(const sockaddr_un& addr) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::_exit(2);
  }
  return fd;
}

// Whether the server ends `fd` within `ms` (RDHUP: it shut its side).
bool ChildSeesEnd(int fd, int ms) {
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, ms) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
}

// For a forked child of a uid just cut: exits 5 if its next connection is
// admitted at once, 6 if one is refused past `penalty_ms`, else 0.
[[noreturn]] void ChildExitsByPenalty(const sockaddr_un& addr, int64_t penalty_ms) {
  if (!ChildSeesEnd(ChildConnect(addr), 10000)) ::_exit(5);
  ::usleep(penalty_ms * 1000);
  if (ChildSeesEnd(ChildConnect(addr), 1000)) ::_exit(6);
  ::_exit(0);
}

class GrpcListenerTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    path_ = dir_ / "control.sock";
    absl::StatusOr<BoundSocket> listener = BindUnixSocket(path_, SOCK_STREAM, 0600);
    ASSERT_TRUE(listener.ok()) << listener.status();
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    StartListener(std::move(listener->fd));
  }
  void StartListener(UniqueFd listener) {
    GrpcListener::relay_always = GetParam();
    absl::StatusOr<std::unique_ptr<GrpcListener>> l = GrpcListener::Start(
        std::move(listener), server_.get(),
        [this](uid_t uid, ConnectionCounts held) {
          last_uid_ = uid;
          return held.of_uid >= limit_
                     ? absl::ResourceExhaustedError(absl::StrCat("uid ", uid, " at the limit"))
                     : absl::OkStatus();
        },
        nullptr,
        [this] {
          return ConnectRate::Limits{rate_.load(), 2 * rate_.load()};
        });
    GrpcListener::relay_always = false;
    ASSERT_TRUE(l.ok()) << l.status();
    listener_ = *std::move(l);
  }
  void TearDown() override {
    for (LingeringSocket& l : lingering_) l.Release();
    if (listener_) listener_->Stop();
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    listener_.reset();
  }

  // The control socket's address.
  sockaddr_un Addr() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    return addr;
  }
  UniqueFd Raw() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_un addr = Addr();
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
        << std::strerror(errno);
    return fd;
  }
  // Whether the server ended `fd`'s connection (EOF within 10 s).
  static bool Ended(const UniqueFd& fd) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return false;
    char buf[256];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) {}  // a GOAWAY first
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }
  grpc::Status Check() {
    auto stub = Health::NewStub(
        grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    HealthCheckResponse resp;
    return stub->Check(&ctx, HealthCheckRequest(), &resp);
  }
  uint32_t Mine() const { return listener_->held(::getuid()).of_uid; }

  testing::TempDir dir_{"grpc-listener"};
  std::string path_;
  AlwaysServing service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<GrpcListener> listener_;
  // Read and written by the listener's thread too.
  std::atomic<uint32_t> limit_{2};
  std::atomic<uint32_t> rate_{1000000};  // connects per second per uid
  std::atomic<uid_t> last_uid_{static_cast<uid_t>(-1)};
  std::vector<LingeringSocket> lingering_;
};

INSTANTIATE_TEST_SUITE_P(DirectAndRelayed, GrpcListenerTest, ::testing::Bool(), DirectOrRelayed);

TEST_P(GrpcListenerTest, ServesAndCountsAConnectionUntilItsPeerCloses) {
  {
    auto stub = Health::NewStub(
        grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    HealthCheckResponse resp;
    ASSERT_TRUE(stub->Check(&ctx, HealthCheckRequest(), &resp).ok());
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
    EXPECT_EQ(last_uid_.load(), ::getuid()) << "the kernel's word for who connected";
    EXPECT_EQ(Mine(), 1u);
    EXPECT_EQ(listener_->held(::getuid() + 1).of_uid, 0u);
    EXPECT_EQ(listener_->held(::getuid() + 1).total, 1u);
  }
  EXPECT_TRUE(WaitFor([&] { return Mine() == 0; })) << "the channel closed";
}

// No gRPC call carries fds, and none may reach gRPC's reads: dropping one
// there releases the file on a gRPC thread (a TCP socket lingering with
// unsent data would hold it for its linger time). Refused at the sender.
TEST_P(GrpcListenerTest, AnFdSentToTheControlSocketIsRefusedAtTheSender) {
  if (listener_->relaying()) {
    GTEST_SKIP() << "relayed: fds are taken off gRPC's way instead "
                    "(FdsSentWithAnyByteNeverReachGrpc)";
  }
  UniqueFd raw = Raw();
  ASSERT_TRUE(WaitFor([&] { return Mine() == 1; })) << "accepted";
  UniqueFd passed(::eventfd(0, EFD_CLOEXEC));
  ASSERT_TRUE(passed);
  const int fds[] = {passed.get()};
  absl::Status sent = SendRecord(raw.get(), "P", fds, false);
  EXPECT_EQ(sent.code(), absl::StatusCode::kPermissionDenied) << sent;
  // Without the fd the same bytes go, and the server serves on.
  EXPECT_TRUE(SendRecord(raw.get(), "P", {}, false).ok());
  EXPECT_TRUE(Check().ok());
}

TEST_P(GrpcListenerTest, RefusesAUidAtItsLimitAndAdmitsItAgainOnceOneEnds) {
  UniqueFd a = Raw(), b = Raw();
  ASSERT_TRUE(WaitFor([&] { return Mine() == 2; }));
  UniqueFd c = Raw();
  EXPECT_TRUE(Ended(c)) << "refused: closed at once";
  EXPECT_EQ(Mine(), 2u);
  EXPECT_FALSE(Check().ok()) << "gRPC clients of the uid are refused too";
  a.reset();
  ASSERT_TRUE(WaitFor([&] { return Mine() == 1; })) << "a peer's close is seen";
  EXPECT_TRUE(Check().ok()) << "room again";
}

// A uid that opens connections faster than the policy's rate has them
// closed at accept (before any setup); another uid has a bucket of its
// own, root none.
TEST_P(GrpcListenerTest, ConnectionsPastTheirUidsRateAreClosedAtAccept) {
  if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  limit_ = 100;
  rate_ = 1;  // bursts of 2
  std::vector<UniqueFd> held;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(65534, path_, SOCK_STREAM);
    if (absl::IsUnimplemented(c.status())) GTEST_SKIP() << c.status();
    ASSERT_TRUE(c.ok()) << c.status();
    held.push_back(*std::move(c));
  }
  ASSERT_TRUE(WaitFor([&] { return listener_->held(65534).of_uid == 2; }));
  absl::StatusOr<UniqueFd> third = testing::ConnectAs(65534, path_, SOCK_STREAM);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(ChildSeesEnd(third->get(), 10000)) << "past the rate: closed at once";
  EXPECT_EQ(listener_->rate_limited_total(), 1u);
  EXPECT_EQ(listener_->held(65534).of_uid, 2u);
  absl::StatusOr<UniqueFd> other = testing::ConnectAs(65533, path_, SOCK_STREAM);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(WaitFor([&] { return listener_->held(65533).of_uid == 1; }))
      << "uid 65533 was held to 65534's bucket";
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(Check().ok()) << "root, call " << i;
  EXPECT_EQ(listener_->rate_limited_total(), 1u);
}

// The listener reads a subuid file of the test's, in which uids
// 200000-265535 are one user's subordinate range.
class GrpcListenerSubuidTest : public GrpcListenerTest {
 protected:
  void SetUp() override {
    std::ofstream(dir_ / "subuid") << "someone:200000:65536\n";
    ASSERT_EQ(::chmod((dir_ / "subuid").c_str(), 0644), 0);  // whatever the umask
    const std::string before = SubordinateUidFile();
    SetSubordinateUidFile(dir_ / "subuid");
    GrpcListenerTest::SetUp();
    SetSubordinateUidFile(before);
  }
};

// The uids of one subordinate range draw on one bucket at accept: a user
// may not flood hallocd through its 65,536 subordinate uids.
TEST_P(GrpcListenerSubuidTest, ASubordinateRangesUidsShareOneRate) {
  if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
  // The log budget is the process's: let earlier cases' lines age out of
  // its one-second window first.
  absl::SleepFor(absl::Milliseconds(1100));
  LogLines lines("control socket: refused a connection: ");
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  limit_ = 100;
  rate_ = 1;  // bursts of 2
  std::vector<UniqueFd> held;
  for (uid_t uid : {200000u, 265535u}) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(uid, path_, SOCK_STREAM);
    if (absl::IsUnimplemented(c.status())) GTEST_SKIP() << c.status();
    ASSERT_TRUE(c.ok()) << c.status();
    held.push_back(*std::move(c));
    ASSERT_TRUE(WaitFor([&] { return listener_->held(uid).of_uid == 1; })) << uid;
  }
  const absl::Time first_refusal = absl::Now();  // about: the log window's start
  absl::StatusOr<UniqueFd> third = testing::ConnectAs(200002, path_, SOCK_STREAM);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(ChildSeesEnd(third->get(), 10000)) << "past the range's rate: closed at once";
  EXPECT_EQ(listener_->rate_limited_total(), 1u);
  // Refusals before the peer is charged are the range's: eight more uids
  // of it take one uid's share of the refusal lines (3 a second), not one
  // share each.
  // (A token earned back on a slow machine admits one: not counted.)
  uint64_t refused = 1;
  std::vector<UniqueFd> admitted;
  for (uid_t uid = 200010; uid < 200018; ++uid) {
    absl::StatusOr<UniqueFd> c = testing::ConnectAs(uid, path_, SOCK_STREAM);
    ASSERT_TRUE(c.ok()) << c.status();
    if (ChildSeesEnd(c->get(), 2000)) {
      ++refused;
    } else {
      admitted.push_back(*std::move(c));
    }
  }
  EXPECT_GE(refused, 5u) << "the range's bucket was not empty";
  EXPECT_EQ(listener_->rate_limited_total(), refused);
  // The listener's refusal lines: 3 a second for one uid.
  ExpectOneUidsShare(lines, "ranges of \"someone\"", 3, first_refusal);
  absl::StatusOr<UniqueFd> outside = testing::ConnectAs(265536, path_, SOCK_STREAM);
  ASSERT_TRUE(outside.ok()) << outside.status();
  EXPECT_TRUE(WaitFor([&] { return listener_->held(265536).of_uid == 1; }))
      << "uid 265536, outside the range, was held to its bucket";
}

INSTANTIATE_TEST_SUITE_P(DirectAndRelayed, GrpcListenerSubuidTest, ::testing::Bool(),
                         DirectOrRelayed);

// A client that reads nothing of what it is sent. Once its socket's buffer
// is full, each further reply's status cannot go out and gRPC's thread
// waits for the call to close (helper-72's review: 100 Stats calls held
// every thread until the client went away). The connection is cut once
// 64 KiB or more have stayed unread for unread_limit, and its uid waits
// cut_penalty before it may connect again.
//
// The two durations are shortened before the listener's thread starts (it
// reads them), and put back once it has stopped.
class GrpcListenerCutTest : public GrpcListenerTest {
 protected:
  void SetUp() override {
    GrpcListener::unread_limit = absl::Seconds(1);
    GrpcListener::cut_penalty = absl::Seconds(2);
    GrpcListenerTest::SetUp();
  }
  void TearDown() override {
    GrpcListenerTest::TearDown();
    GrpcListener::unread_limit = limit_before_;
    GrpcListener::cut_penalty = penalty_before_;
  }
  const absl::Duration limit_before_ = GrpcListener::unread_limit;
  const absl::Duration penalty_before_ = GrpcListener::cut_penalty;
};
INSTANTIATE_TEST_SUITE_P(DirectAndRelayed, GrpcListenerCutTest, ::testing::Bool(), DirectOrRelayed);

TEST_P(GrpcListenerCutTest, AConnectionThatLeavesWhatItIsSentUnreadIsCut) {
  if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  // Windows wide open (each stream's 2^30, the connection's +2^30), then
  // health checks, far more replies than the socket holds. Built before
  // the fork: the child makes syscalls only.
  std::string out = kPreface;
  out += Frame(kSettings, 0, 0, std::string("\x00\x04\x40\x00\x00\x00", 6));
  out += Frame(kWindowUpdate, 0, 0, std::string("\x40\x00\x00\x00", 4));
  for (uint32_t stream = 1; stream < 2 * 6000; stream += 2) {
    out += EmptyCall("/grpc.health.v1.Health/Check", stream);
  }
  const sockaddr_un addr = Addr();
  const int64_t penalty_ms = absl::ToInt64Milliseconds(GrpcListener::cut_penalty);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // uid 65534, syscalls only
    ChildBecomeNobody();
    const int raw = ChildConnect(addr);  // never read
    if (::send(raw, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) {
      ::_exit(3);
    }
    if (!ChildSeesEnd(raw, 15000)) ::_exit(4);  // not cut
    ChildExitsByPenalty(addr, penalty_ms);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  if (WEXITSTATUS(status) == 1) GTEST_SKIP() << "cannot switch to uid 65534 here";
  EXPECT_NE(WEXITSTATUS(status), 4)
      << "the connection that left what it was sent unread was not cut";
  EXPECT_NE(WEXITSTATUS(status), 5) << "its uid connected again at once";
  EXPECT_NE(WEXITSTATUS(status), 6) << "its uid was refused past the penalty";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(listener_->cut_total(), 1u);  // what Stats and the metrics say
  EXPECT_TRUE(WaitFor([&] { return listener_->held(65534).of_uid == 0; }));
  EXPECT_TRUE(Check().ok()) << "root's connections: no penalty (an operator's)";
}

// CutUid (a uid flooding gRPC with calls past its limit: CallsPerUid) ends
// every connection of the uid and refuses its new ones for cut_penalty;
// root's are never cut (an operator's).
TEST_P(GrpcListenerCutTest, CutUidEndsAUidsConnectionsAndRefusesItForAWhile) {
  if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  const sockaddr_un addr = Addr();
  int ready[2], go[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  const int64_t penalty_ms = absl::ToInt64Milliseconds(GrpcListener::cut_penalty);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // uid 65534, syscalls only
    ChildBecomeNobody();
    const int a = ChildConnect(addr), b = ChildConnect(addr);
    char c = 0;
    if (::write(ready[1], "r", 1) != 1 || ::read(go[0], &c, 1) != 1) ::_exit(3);
    if (!ChildSeesEnd(a, 10000) || !ChildSeesEnd(b, 10000)) ::_exit(4);  // not cut
    ChildExitsByPenalty(addr, penalty_ms);
  }
  ::close(ready[1]);
  ::close(go[0]);
  char c = 0;
  const bool connected = ::read(ready[0], &c, 1) == 1;
  if (connected) {
    EXPECT_TRUE(WaitFor([&] { return listener_->held(65534).of_uid == 2; }));
    UniqueFd mine = Raw();
    ASSERT_TRUE(WaitFor([&] { return Mine() == 1; }));
    listener_->CutUid(65534, "a test");
    listener_->CutUid(::getuid(), "a test");  // root's: never cut
    EXPECT_EQ(::write(go[1], "g", 1), 1);
    EXPECT_TRUE(Check().ok()) << "root's connections: no penalty";
  }
  ::close(ready[0]);
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  if (WEXITSTATUS(status) == 1) GTEST_SKIP() << "cannot switch to uid 65534 here";
  EXPECT_NE(WEXITSTATUS(status), 4) << "the uid's connections were not cut";
  EXPECT_NE(WEXITSTATUS(status), 5) << "its uid connected again at once";
  EXPECT_NE(WEXITSTATUS(status), 6) << "its uid was refused past the penalty";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(listener_->cut_total(), 2u);
}

// Refusals are logged with a share per uid: one uid refused on and on does
// not keep another's refusals out of the log (uid 65534's 200 refused
// connections used to take the whole second's budget).
TEST_P(GrpcListenerTest, OneUidsRefusalsLeaveOthersTheirLogLines) {
  if (::geteuid() != 0) GTEST_SKIP() << "connecting as another uid needs root";
  limit_ = 0;  // every connection refused
  // The budget is the process's: let the lines earlier cases logged (root's
  // refusals among them) age out of its one-second window first.
  absl::SleepFor(absl::Milliseconds(1100));
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  LogLines lines("control socket: refused a connection: ");
  // The refusal lines of `uid`'s connections (the test's admit names it).
  const auto of = [&lines](uid_t uid) {
    return lines.Count(absl::StrCat("uid ", uid, " at the limit"));
  };
  const sockaddr_un addr = Addr();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // syscalls only
    ChildBecomeNobody();
    // Each connection is held until the listener ended it (refused), so
    // that this process is alive while each is judged.
    int fds[200];
    for (int& fd : fds) {
      fd = ChildConnect(addr);
    }
    for (int fd : fds) {
      pollfd p{fd, POLLIN, 0};
      char byte;
      if (::poll(&p, 1, 10000) != 1 || ::read(fd, &byte, 1) > 0) ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  if (WEXITSTATUS(status) == 1) GTEST_SKIP() << "cannot switch to uid 65534 here";
  ASSERT_EQ(WEXITSTATUS(status), 0) << "uid 65534 could not connect";
  ASSERT_TRUE(WaitFor([&] { return of(65534) > 0; }));
  UniqueFd mine = Raw();
  EXPECT_TRUE(Ended(mine));
  EXPECT_TRUE(WaitFor([&] { return of(0) == 1; })) << "root's refusal was not logged";
  EXPECT_LE(of(65534), 3) << "one uid took more than its share of the lines";
}

// gRPC 1.51 logs a header value it cannot parse whole ("Error parsing
// metadata: ... value=..."): with hallocd's handler (LimitGrpcLogs, as
// main installs it) a client's newline and escape sequence come out
// escaped, in a line of hallocd's own format.
TEST_P(GrpcListenerTest, AHeaderValueGrpcLogsComesOutEscaped) {
  LimitGrpcLogs();
  LogLines lines("gRPC ");
  const std::string forged = "1S\nI1207 00:00:00.000000 1 audit.cc:40] AUDIT forged\x1b[31m";
  const std::string out =
      kPreface + Frame(kSettings, 0, 0, "") +
      EmptyCall("/grpc.health.v1.Health/Check", 1, Literal("grpc-timeout", forged));
  UniqueFd raw = Raw();
  ASSERT_EQ(::send(raw.get(), out.data(), out.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(out.size()));
  ASSERT_TRUE(WaitFor([&] { return lines.Count("AUDIT forged") > 0; })) << "gRPC logged nothing";
  for (const std::string& line : lines.lines()) {
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
  }
  EXPECT_EQ(lines.Count("value=1S\\nI1207"), 1);
}

TEST_P(GrpcListenerTest, AConnectionGrpcEndsIsForgottenToo) {
  // gRPC ends a connection that does not speak HTTP/2; it shuts the socket
  // down before closing its fd, so the listener's duplicate sees the end
  // and the peer is not left hanging on a socket hallocd keeps open.
  UniqueFd raw = Raw();
  ASSERT_TRUE(WaitFor([&] { return Mine() == 1; }));
  const char garbage[] = "not http/2 at all\r\n\r\n";
  ASSERT_GT(::write(raw.get(), garbage, sizeof(garbage)), 0);
  EXPECT_TRUE(Ended(raw)) << "the peer sees the end";
  EXPECT_TRUE(WaitFor([&] { return Mine() == 0; }));
}

TEST_P(GrpcListenerTest, AHalfClosedConnectionIsForgottenAndEnded) {
  // Shutting down only the writing side must not keep a slot uncounted
  // while the connection lives on: gRPC ends it too.
  UniqueFd raw = Raw();
  ASSERT_TRUE(WaitFor([&] { return Mine() == 1; }));
  ASSERT_EQ(::shutdown(raw.get(), SHUT_WR), 0);
  EXPECT_TRUE(WaitFor([&] { return Mine() == 0; }));
  EXPECT_TRUE(Ended(raw)) << "gRPC closed its side as well";
}

// An fd sent with any byte of the stream is taken off by the relay and
// closed on a thread of its own: even lingering sockets, each holding up
// whatever thread drops it for two minutes, leave gRPC serving. The records
// are queued before the listener starts (so that each holds its socket's
// last reference): as on a socket systemd hands over, where connections
// made before hallocd refused fds keep what they queued. So even where the
// kernel refuses fds at the sender ("Direct"), those connections go
// through the relay.
TEST_P(GrpcListenerTest, FdsSentWithAnyByteNeverReachGrpc) {
  listener_->Stop();
  listener_.reset();
  const std::string old_path = path_;
  path_ = dir_ / "control2.sock";
  absl::StatusOr<BoundSocket> listener = BindUnixSocket(path_, SOCK_STREAM, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  limit_ = 100;
  std::vector<UniqueFd> senders;
  for (int i = 0; i < 8; ++i) {
    senders.push_back(Raw());
    absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(absl::Seconds(120));
    ASSERT_TRUE(l.ok()) << l.status();
    const int fds[] = {l->sock.get()};
    ASSERT_TRUE(SendRecord(senders.back().get(), "P", fds, false).ok());
    l->sock.reset();
    lingering_.push_back(*std::move(l));
  }
  StartListener(std::move(listener->fd));
  EXPECT_TRUE(Check().ok()) << "gRPC's threads are held";
  EXPECT_TRUE(Check().ok());
  for (LingeringSocket& l : lingering_) l.Release();
  // Read again once their fds are closed: no HTTP/2, so gRPC ends them.
  const char garbage[] = "not http/2 at all\r\n\r\n";
  for (const UniqueFd& s : senders) {
    ASSERT_GT(::write(s.get(), garbage, sizeof(garbage)), 0);
    EXPECT_TRUE(Ended(s));
  }
  path_ = old_path;
}

// A connection refused at admission with fds queued (made before the
// listener refused them) is closed off the accepting thread, which serves
// on: a lingering socket closed there would hold it for two minutes.
TEST_P(GrpcListenerTest, ARefusedConnectionWithFdsQueuedHoldsNothing) {
  listener_->Stop();
  listener_.reset();
  path_ = dir_ / "control3.sock";
  absl::StatusOr<BoundSocket> listener = BindUnixSocket(path_, SOCK_STREAM, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  limit_ = 2;
  UniqueFd a = Raw(), b = Raw(), refused = Raw();
  absl::StatusOr<LingeringSocket> l = LingeringSocket::Create(absl::Seconds(120));
  ASSERT_TRUE(l.ok()) << l.status();
  const int fds[] = {l->sock.get()};
  ASSERT_TRUE(SendRecord(refused.get(), "P", fds, false).ok());
  l->sock.reset();
  lingering_.push_back(*std::move(l));
  StartListener(std::move(listener->fd));
  EXPECT_TRUE(Ended(refused)) << "refused: at the limit";
  ASSERT_TRUE(WaitFor([&] { return Mine() == 2; }));
  a.reset();
  EXPECT_TRUE(WaitFor([&] { return Mine() == 1; })) << "the accepting thread is held";
  EXPECT_TRUE(Check().ok());
}

}  // namespace
}  // namespace halloc
