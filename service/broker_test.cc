// The broker on its own: serving a socket it was handed (systemd socket
// activation) as well as one it binds.
#include "service/broker.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <linux/sockios.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/broker_test_util.h"
#include "service/util/unix_listener.h"

namespace halloc {
namespace {

using testing::ChildArgv;
using testing::TestChild;

class BrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-broker-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    core_ = std::make_unique<Allocator>(std::make_unique<MemfdBackend>(), Limits());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A socket of `type` bound to `path`, listening unless `listen` is false.
  UniqueFd Bound(const std::string& path, int type, bool listen = true) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
    EXPECT_TRUE(addr.ok());
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
    if (listen) EXPECT_EQ(::listen(fd.get(), 16), 0);
    return fd;
  }

  std::string dir_;
  std::unique_ptr<Allocator> core_;
};

TEST_F(BrokerTest, ServesAPassedSocketAndLeavesItsPathAlone) {
  const std::string path = dir_ + "/broker.sock";
  // As systemd makes it: blocking, no SO_PASSCRED (the unit may omit it).
  absl::StatusOr<std::unique_ptr<Broker>> broker =
      Broker::Serve(Bound(path, SOCK_SEQPACKET), path, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT(c->welcome.session_id(), 0u);
  EXPECT_EQ(c->welcome.session_token().size(), 32u);
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  ASSERT_TRUE(ConnectBroker(path, absl::Seconds(5)).ok());
  (*broker)->Stop();
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0);
}

TEST_F(BrokerTest, RefusesAPassedSocketOfTheWrongKind) {
  const std::string stream = dir_ + "/stream.sock";
  absl::StatusOr<std::unique_ptr<Broker>> b =
      Broker::Serve(Bound(stream, SOCK_STREAM), stream, core_.get());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("SOCK_SEQPACKET"), std::string::npos);

  const std::string idle = dir_ + "/idle.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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
  const std::string path = dir_ + "/broker.sock";
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

// The status code of a fast-path Allocate of one page on `sock`.
int AllocateCode(int sock) {
  size_t fds = 0;
  return static_cast<int>(AllocateOn(sock, 4096, &fds).code());
}

// Execs `argv` (a test child's: ChildArgv) as a process with pid `pid`
// (clone3's set_tid: needs CAP_SYS_ADMIN over the pid namespace), keeping
// `keep_fd`; it exits with what the child returns. The clone3 child makes
// only async-signal-safe calls before its exec (this process has threads:
// the broker's). Its pid, or -1 with errno set.
pid_t SpawnWithPid(pid_t pid, std::vector<std::string> argv, int keep_fd) {
  std::vector<char*> raw;
  for (std::string& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  clone_args ca{};
  ca.exit_signal = SIGCHLD;
  ca.set_tid = reinterpret_cast<uint64_t>(&pid);
  ca.set_tid_size = 1;
  const long r = ::syscall(SYS_clone3, &ca, sizeof(ca));
  if (r == 0) {
    if (::fcntl(keep_fd, F_SETFD, 0) == 0) ::execv(raw[0], raw.data());
    ::_exit(127);
  }
  return static_cast<pid_t>(r);
}

// A test child (test_child.h) started with `args` and the end of a socket
// pair hands over one record carrying one fd (its last arg names the fd to
// send on), then exits. Once the child is reaped: its pid and that record.
struct Handed {
  pid_t pid = -1;
  Record record;
};
absl::StatusOr<Handed> HandedOverByAChild(const std::string& name, std::vector<std::string> args) {
  int pass[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pass) != 0) {
    return ErrnoStatus(errno, "socketpair");
  }
  UniqueFd ours(pass[0]), theirs(pass[1]);
  args.push_back(absl::StrCat(theirs.get()));
  ASSIGN_OR_RETURN(TestChild child, TestChild::Spawn(name, std::move(args), {theirs.get()}));
  theirs.reset();
  const pid_t pid = child.pid();
  const std::optional<int> status = child.Wait(absl::Seconds(30));
  if (!status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat("the child ended with status ", status.value_or(-1)));
  }
  ASSIGN_OR_RETURN(Record record, ReceiveRecord(ours.get(), false));
  if (record.fds.size() != 1) return absl::InternalError("the child handed over no fd");
  return Handed{pid, std::move(record)};
}

// Sends `bytes` and `fd` on the fd named by `arg`: a child's exit status.
int HandOver(const std::string& arg, const std::string& bytes, const UniqueFd& fd) {
  int to = -1;
  if (!absl::SimpleAtoi(arg, &to)) return 4;
  const int raw = fd.get();
  return SendRecord(to, bytes, {&raw, 1}, false).ok() ? 0 : 3;
}

// Only this test's executable may allocate; anyone else is denied.
void TrustOnlyThisExecutable(Allocator& core) {
  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
      absl::StrCat("clients { name: \"trusted\" match { exe: \"", self,
                   "\" } usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ_WRITE }\n"
                   "clients { name: \"others\" match { any: true } }\n"),
      "broker_test");
  ASSERT_TRUE(policy.ok()) << policy.status();
  core.SetPolicy(*policy);
}

constexpr char kPython[] = "/usr/bin/python3";

// In a test child: a connection to the broker at `path`, verified as this
// executable and trusted with one Allocate; the child exits (1, 2) if not.
BrokerConnection TrustedOrExit(const std::string& path) {
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(10));
  if (!c.ok()) ::_exit(1);
  if (AllocateCode(c->fd.get()) != 0) ::_exit(2);
  return *std::move(c);
}

// Child "trusted-handover" (args: broker socket, fd to hand over on):
// verifies as this executable, is trusted, hands the socket over, exits.
int TrustedHandover(absl::Span<const std::string> args, int) {
  if (args.size() != 2) return 5;
  BrokerConnection c = TrustedOrExit(args[0]);
  return HandOver(args[1], "conn", c.fd);
}
HALLOC_TEST_CHILD("trusted-handover", TrustedHandover);

// Child "allocate-on" (args: a broker socket's fd): exits with the status
// code of one fast-path Allocate on it.
int AllocateOnFd(absl::Span<const std::string> args, int) {
  int sock = -1;
  if (args.size() != 1 || !absl::SimpleAtoi(args[0], &sock)) return 100;
  return AllocateCode(sock);
}
HALLOC_TEST_CHILD("allocate-on", AllocateOnFd);

// Child "hello-handover" (args: broker socket, fd to hand over on):
// connects, takes the Hello, hands it and the socket over, exits.
int HelloHandover(absl::Span<const std::string> args, int) {
  if (args.size() != 2) return 5;
  absl::StatusOr<UniqueFd> sock = ConnectSeqpacket(args[0]);
  if (!sock.ok()) return 1;
  absl::StatusOr<Record> hello = ReceiveRecord(sock->get(), false);
  if (!hello.ok()) return 2;
  return HandOver(args[1], hello->bytes, *sock);
}
HALLOC_TEST_CHILD("hello-handover", HelloHandover);

// Child "answer-challenge" (args: a broker socket's fd, the challenge in
// hex): answers it; exits with the reply's status code, or 100+ if none.
int AnswerChallenge(absl::Span<const std::string> args, int) {
  int sock = -1;
  if (args.size() != 2 || !absl::SimpleAtoi(args[0], &sock)) return 100;
  v1::BrokerRequest verify;
  verify.mutable_verify()->set_challenge(absl::HexStringToBytes(args[1]));
  if (!SendRecord(sock, verify.SerializeAsString(), {}, false).ok()) return 101;
  absl::StatusOr<Record> reply = ReceiveRecord(sock, false);
  v1::BrokerFrame frame;
  if (!reply.ok() || !frame.ParseFromString(reply->bytes) || !frame.has_reply()) return 102;
  return frame.reply().code();
}
HALLOC_TEST_CHILD("answer-challenge", AnswerChallenge);

// Child "trusted-then-python" (args: broker socket, reply fd, request in
// hex): verifies as this executable and is trusted, then execs python,
// which sends the request on the verified socket (fd 3) and prints the
// reply (hex) on the reply fd before it exits.
int TrustedThenPython(absl::Span<const std::string> args, int) {
  int reply = -1;
  if (args.size() != 3 || !absl::SimpleAtoi(args[1], &reply)) return 5;
  const BrokerConnection c = TrustedOrExit(args[0]);
  if (::dup2(reply, 1) != 1 || ::dup2(c.fd.get(), 3) != 3 || ::fcntl(3, F_SETFD, 0) != 0) {
    return 3;
  }
  ::execl(kPython, kPython, "-c",
          "import os, sys; os.write(3, bytes.fromhex(sys.argv[1])); "
          "print(os.read(3, 65536).hex())",
          args[2].c_str(), static_cast<char*>(nullptr));
  return 4;
}
HALLOC_TEST_CHILD("trusted-then-python", TrustedThenPython);

TEST_F(BrokerTest, AVerifiedProcessThatExitedVouchesForNothingOnItsReusedPid) {
  // A process holding the socket (a child the verified one forked, or a
  // receiver of the fd) waits for the verified process to exit and for its
  // pid to come round again (cycling pids; here at once, with set_tid):
  // its requests are then stamped with the verified pid, but they are not
  // the verified executable's.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  const std::string path = dir_ + "/broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  // Verifies as this executable, is trusted, hands the socket over, exits.
  absl::StatusOr<Handed> got = HandedOverByAChild("trusted-handover", {path});
  ASSERT_TRUE(got.ok()) << got.status() << " (the verified process itself was trusted)";
  const pid_t verified = got->pid;
  const int sock = got->record.fds[0].get();
  int status = 0;
  EXPECT_EQ(AllocateCode(sock), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "another process on the socket: judged by uid alone";

  absl::StatusOr<std::vector<std::string>> argv =
      ChildArgv("allocate-on", {absl::StrCat(sock)}, -1);
  ASSERT_TRUE(argv.ok()) << argv.status();
  const pid_t again = SpawnWithPid(verified, *std::move(argv), sock);
  if (again < 0) {
    GTEST_SKIP() << "cannot start a process with a chosen pid here (clone3 set_tid: "
                 << std::strerror(errno) << ")";
  }
  ASSERT_EQ(again, verified);
  ASSERT_EQ(::waitpid(again, &status, 0), again);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "the verified pid, reused, vouches for nothing";
}

// The handshake must be finished by the process that connected while it
// runs: one that exited leaves its pid to whoever gets it next, who may
// hold the unverified socket (a fork, a receiver of the fd) and answer
// the challenge as the connector's uid.
TEST_F(BrokerTest, AConnectorsReusedPidCannotFinishItsHandshake) {
  const std::string path = dir_ + "/broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  // Connects, takes the Hello, hands it and the socket over, exits.
  absl::StatusOr<Handed> got = HandedOverByAChild("hello-handover", {path});
  ASSERT_TRUE(got.ok()) << got.status();
  const pid_t connector = got->pid;
  v1::BrokerFrame hello;
  ASSERT_TRUE(hello.ParseFromString(got->record.bytes) && hello.has_hello());
  const int sock = got->record.fds[0].get();
  int status = 0;
  const std::string challenge = hello.hello().challenge();

  // The reuser's answer: the reply's status code, or 100+ if none came.
  absl::StatusOr<std::vector<std::string>> argv =
      ChildArgv("answer-challenge", {absl::StrCat(sock), absl::BytesToHexString(challenge)}, -1);
  ASSERT_TRUE(argv.ok()) << argv.status();
  const pid_t again = SpawnWithPid(connector, *std::move(argv), sock);
  if (again < 0) {
    GTEST_SKIP() << "cannot start a process with a chosen pid here (clone3 set_tid: "
                 << std::strerror(errno) << ")";
  }
  ASSERT_EQ(again, connector);
  ASSERT_EQ(::waitpid(again, &status, 0), again);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "a process given the connector's pid finished its handshake";
}

// An exec keeps the pid and the pidfd but runs another file: the verified
// executable no longer speaks for what the process sends afterwards.
TEST_F(BrokerTest, AVerifiedProcessThatExecsVouchesForNothingAfterwards) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  const std::string path = dir_ + "/broker.sock";
  absl::StatusOr<std::unique_ptr<Broker>> broker = Broker::Start(path, 0600, core_.get());
  ASSERT_TRUE(broker.ok()) << broker.status();
  v1::BrokerRequest req;
  req.set_request_id(7);
  req.mutable_allocate()->mutable_desc()->set_size(4096);
  const std::string hex = absl::BytesToHexString(req.SerializeAsString());
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  UniqueFd reply_r(out[0]), reply_w(out[1]);
  absl::StatusOr<TestChild> child = TestChild::Spawn(
      "trusted-then-python", {path, absl::StrCat(reply_w.get()), hex}, {reply_w.get()});
  ASSERT_TRUE(child.ok()) << child.status();
  reply_w.reset();
  std::string printed;
  char buf[4096];
  for (ssize_t n; (n = ::read(reply_r.get(), buf, sizeof(buf))) > 0;) printed.append(buf, n);
  const std::optional<int> status = child->Wait(absl::Seconds(30));
  ASSERT_TRUE(status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << "the verified process, before its exec, was trusted: " << status.value_or(-1);
  v1::BrokerFrame frame;
  ASSERT_TRUE(frame.ParseFromString(absl::HexStringToBytes(absl::StripAsciiWhitespace(printed))))
      << printed;
  ASSERT_TRUE(frame.has_reply());
  EXPECT_EQ(frame.reply().request_id(), 7u);
  EXPECT_EQ(frame.reply().code(), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "python, exec'd by the verified process, is not the verified executable";
}

}  // namespace
}  // namespace halloc
