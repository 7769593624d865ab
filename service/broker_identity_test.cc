// Who a broker request speaks for: the kernel's stamp on each record, the
// verified process only while it is that process running that executable
// (pid reuse, exec, a socket handed on), for Allocate and Import alike; and
// the fast-path Import's answer, its reply and fd in one record.
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
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
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/broker.h"
#include "service/broker_test_util.h"

namespace halloc {
namespace {

using testing::ChildArgv;
using testing::TestChild;

class BrokerIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-broker-identity-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/broker.sock";
    core_ = std::make_unique<Allocator>(std::make_unique<MemfdBackend>(), Limits());
  }
  void TearDown() override {
    broker_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Starts the broker on `path_` (in the test's directory).
  void StartBroker() {
    absl::StatusOr<std::unique_ptr<Broker>> b = Broker::Start(path_, 0600, core_.get());
    ASSERT_TRUE(b.ok()) << b.status();
    broker_ = *std::move(b);
  }

  std::string dir_, path_;
  std::unique_ptr<Allocator> core_;
  std::unique_ptr<Broker> broker_;  // gone before core_
};

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

// The exit code of test child `name` (`args`) run as a process with pid
// `pid`, keeping `keep_fd`. UNAVAILABLE (say why, then skip) where no
// process can be started with a chosen pid.
absl::StatusOr<int> ExitCodeWithPid(pid_t pid, const std::string& name,
                                    std::vector<std::string> args, int keep_fd) {
  ASSIGN_OR_RETURN(std::vector<std::string> argv, ChildArgv(name, std::move(args), -1));
  const pid_t again = SpawnWithPid(pid, std::move(argv), keep_fd);
  if (again < 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot start a process with a chosen pid here (clone3 set_tid: ", std::strerror(errno),
        ")"));
  }
  int status = 0;
  if (::waitpid(again, &status, 0) != again) return ErrnoStatus(errno, "waitpid");
  if (again != pid) return absl::InternalError(absl::StrCat("started as pid ", again));
  if (!WIFEXITED(status)) return absl::InternalError(absl::StrCat("wait status ", status));
  return WEXITSTATUS(status);
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

// Only this test's executable (client "trusted") may allocate or share,
// and it shares with anyone; anyone else is client "others", which may
// import what is shared with it and do nothing else.
void TrustOnlyThisExecutable(Allocator& core) {
  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
      absl::StrCat("clients { name: \"trusted\" match { exe: \"", self,
                   "\" } usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ_WRITE "
                   "share_to: \"*\" receive_from: \"*\" }\n"
                   "clients { name: \"others\" match { any: true } receive_from: \"*\" }\n"),
      "broker_identity_test");
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

TEST_F(BrokerIdentityTest, AVerifiedProcessThatExitedVouchesForNothingOnItsReusedPid) {
  // A process holding the socket (a child the verified one forked, or a
  // receiver of the fd) waits for the verified process to exit and for its
  // pid to come round again (cycling pids; here at once, with set_tid):
  // its requests are then stamped with the verified pid, but they are not
  // the verified executable's.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  // Verifies as this executable, is trusted, hands the socket over, exits.
  absl::StatusOr<Handed> got = HandedOverByAChild("trusted-handover", {path});
  ASSERT_TRUE(got.ok()) << got.status() << " (the verified process itself was trusted)";
  const pid_t verified = got->pid;
  const int sock = got->record.fds[0].get();
  EXPECT_EQ(AllocateCode(sock), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "another process on the socket: judged by uid alone";

  absl::StatusOr<int> code = ExitCodeWithPid(verified, "allocate-on", {absl::StrCat(sock)}, sock);
  if (absl::IsUnavailable(code.status())) GTEST_SKIP() << code.status().message();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "the verified pid, reused, vouches for nothing";
}

// The handshake must be finished by the process that connected while it
// runs: one that exited leaves its pid to whoever gets it next, who may
// hold the unverified socket (a fork, a receiver of the fd) and answer
// the challenge as the connector's uid.
TEST_F(BrokerIdentityTest, AConnectorsReusedPidCannotFinishItsHandshake) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  // Connects, takes the Hello, hands it and the socket over, exits.
  absl::StatusOr<Handed> got = HandedOverByAChild("hello-handover", {path});
  ASSERT_TRUE(got.ok()) << got.status();
  const pid_t connector = got->pid;
  v1::BrokerFrame hello;
  ASSERT_TRUE(hello.ParseFromString(got->record.bytes) && hello.has_hello());
  const int sock = got->record.fds[0].get();
  const std::string challenge = hello.hello().challenge();

  // The reuser's answer: the reply's status code, or 100+ if none came.
  absl::StatusOr<int> code = ExitCodeWithPid(
      connector, "answer-challenge", {absl::StrCat(sock), absl::BytesToHexString(challenge)}, sock);
  if (absl::IsUnavailable(code.status())) GTEST_SKIP() << code.status().message();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "a process given the connector's pid finished its handshake";
}

// An exec keeps the pid and the pidfd but runs another file: the verified
// executable no longer speaks for what the process sends afterwards.
// `req` sent on a connection to the broker at `path` by python, exec'd by
// the process that verified it (and was trusted: TrustedOrExit): the reply.
absl::StatusOr<v1::BrokerReply> AskedAfterExec(const std::string& path,
                                               const v1::BrokerRequest& req) {
  const std::string hex = absl::BytesToHexString(req.SerializeAsString());
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd reply_r(out[0]), reply_w(out[1]);
  ASSIGN_OR_RETURN(TestChild child,
                   TestChild::Spawn("trusted-then-python",
                                    {path, absl::StrCat(reply_w.get()), hex}, {reply_w.get()}));
  reply_w.reset();
  std::string printed;
  char buf[4096];
  for (ssize_t n; (n = ::read(reply_r.get(), buf, sizeof(buf))) > 0;) printed.append(buf, n);
  const std::optional<int> status = child.Wait(absl::Seconds(30));
  if (!status.has_value() || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat(
        "the verified process, before its exec, was not trusted: status ", status.value_or(-1)));
  }
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(absl::HexStringToBytes(absl::StripAsciiWhitespace(printed))) ||
      !frame.has_reply()) {
    return absl::DataLossError(absl::StrCat("not a reply: ", printed));
  }
  return std::move(*frame.mutable_reply());
}

TEST_F(BrokerIdentityTest, AVerifiedProcessThatExecsVouchesForNothingAfterwards) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  v1::BrokerRequest req;
  req.set_request_id(7);
  req.mutable_allocate()->mutable_desc()->set_size(4096);
  absl::StatusOr<v1::BrokerReply> reply = AskedAfterExec(path, req);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id(), 7u);
  EXPECT_EQ(reply->code(), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "python, exec'd by the verified process, is not the verified executable";
}

v1::BrokerRequest ImportRequest(uint64_t request_id, const std::string& token) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_import_buffer()->set_grant_token(token);
  return req;
}

// A page allocated on the fast path on `sock`: its id and fd, in `id` and
// `fd`.
void AllocatePage(int sock, uint64_t* id, UniqueFd* fd) {
  v1::BrokerRequest req;
  req.set_request_id(1);
  req.mutable_allocate()->mutable_desc()->set_size(4096);
  absl::StatusOr<Answer> a = Ask(sock, req);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(ReplyStatus(a->reply).ok()) << ReplyStatus(a->reply);
  ASSERT_EQ(a->fds.size(), 1u);
  *id = a->reply.allocate().buffers(0).id();
  *fd = std::move(a->fds[0]);
}

// A page `conn` allocates on the fast path, shared by its session with
// `peer` (through the core, as the gRPC Share does): the grant and the page's
// fd, in `grant` and `fd`.
void AllocateAndShare(Allocator& core, const BrokerConnection& conn, const v1::Peer& peer,
                      v1::Grant* grant, UniqueFd* fd) {
  uint64_t id = 0;
  ASSERT_NO_FATAL_FAILURE(AllocatePage(conn.fd.get(), &id, fd));
  absl::StatusOr<std::shared_ptr<Session>> session =
      core.Authenticate(conn.welcome.session_token());
  ASSERT_TRUE(session.ok()) << session.status();
  v1::ShareRequest share;
  share.set_buffer_id(id);
  *share.mutable_peer() = peer;
  share.set_cpu_access(v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> g = core.Share(**session, share);
  ASSERT_TRUE(g.ok()) << g.status();
  *grant = *std::move(g);
}

TEST_F(BrokerIdentityTest, AnImportIsAnsweredWithItsFdInTheSameRecordOrWithNoFd) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->welcome.broker_import());
  v1::Peer peer;
  peer.set_uid(::getuid());
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, peer, &grant, &page));

  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  const int sock = importer->fd.get();
  absl::StatusOr<Answer> got = Ask(sock, ImportRequest(9, grant.token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->reply.request_id(), 9u);
  ASSERT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  ASSERT_TRUE(got->reply.has_import_buffer());
  const v1::BufferInfo& info = got->reply.import_buffer().buffer();
  EXPECT_EQ(info.id(), grant.buffer_id());
  EXPECT_EQ(info.cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_FALSE(info.owned());
  ASSERT_EQ(got->fds.size(), 1u);
  struct stat mine, theirs;
  ASSERT_EQ(::fstat(page.get(), &mine), 0);
  ASSERT_EQ(::fstat(got->fds[0].get(), &theirs), 0);
  EXPECT_EQ(mine.st_ino, theirs.st_ino) << "the same pages";
  EXPECT_EQ(::fcntl(got->fds[0].get(), F_GETFL) & O_ACCMODE, O_RDONLY) << "the grant's rights";

  // Refused: an error reply, and no fd with it.
  for (const std::string& token : {std::string("no such grant"), std::string(),
                                   std::string("\xff\xfe", 2)}) {
    SCOPED_TRACE(absl::CEscape(token));
    absl::StatusOr<Answer> bad = Ask(sock, ImportRequest(10, token));
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_EQ(bad->reply.request_id(), 10u);
    EXPECT_EQ(ReplyStatus(bad->reply).code(), absl::StatusCode::kNotFound);
    EXPECT_FALSE(bad->reply.has_import_buffer());
    EXPECT_TRUE(bad->fds.empty());
  }
  absl::StatusOr<std::shared_ptr<Session>> owner_session =
      core_->Authenticate(owner->welcome.session_token());
  ASSERT_TRUE(owner_session.ok());
  ASSERT_TRUE(core_->Revoke(**owner_session, grant.id()).ok());
  absl::StatusOr<Answer> revoked = Ask(sock, ImportRequest(11, grant.token()));
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(ReplyStatus(revoked->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(revoked->fds.empty());
}

TEST_F(BrokerIdentityTest, AnImportIsJudgedByItsStampLikeAnAllocate) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  v1::Peer trusted;
  trusted.set_name("trusted");
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, trusted, &grant, &page));

  // The verified process, python after its exec, asks on its socket.
  absl::StatusOr<v1::BrokerReply> reply = AskedAfterExec(path, ImportRequest(7, grant.token()));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id(), 7u);
  EXPECT_EQ(reply->code(), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "python, exec'd by the verified process, is client 'others', not 'trusted'";

  // The same grant, asked for by a verified process of this executable.
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got = Ask(importer->fd.get(), ImportRequest(8, grant.token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  EXPECT_EQ(got->fds.size(), 1u);
}

v1::BrokerRequest ShareRequest(uint64_t request_id, uint64_t buffer_id, const std::string& peer) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_share()->set_buffer_id(buffer_id);
  req.mutable_share()->mutable_peer()->set_name(peer);
  return req;
}

TEST_F(BrokerIdentityTest, AShareIsAnsweredWithItsGrantAndJudgedByItsStamp) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  // Only client "trusted" (this executable) may share, with itself.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->welcome.broker_share());
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocatePage(owner->fd.get(), &id, &page));

  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), ShareRequest(2, id, "trusted"));
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->reply.request_id(), 2u);
  ASSERT_TRUE(ReplyStatus(shared->reply).ok()) << ReplyStatus(shared->reply);
  ASSERT_TRUE(shared->reply.has_share());
  EXPECT_EQ(shared->reply.share().grant().buffer_id(), id);
  EXPECT_EQ(shared->reply.share().grant().token().size(), 32u);
  EXPECT_TRUE(shared->fds.empty());
  // The grant works: another session of this executable imports it.
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got =
      Ask(importer->fd.get(), ImportRequest(3, shared->reply.share().grant().token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  EXPECT_EQ(got->fds.size(), 1u);

  // Refused: a buffer the session does not hold, and no peer at all.
  absl::StatusOr<Answer> unknown =
      Ask(owner->fd.get(), ShareRequest(4, uint64_t{1} << 40, "trusted"));
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(ReplyStatus(unknown->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(unknown->reply.has_share());
  v1::BrokerRequest no_peer;
  no_peer.set_request_id(5);
  no_peer.mutable_share()->set_buffer_id(id);
  absl::StatusOr<Answer> nobody = Ask(owner->fd.get(), no_peer);
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  EXPECT_EQ(ReplyStatus(nobody->reply).code(), absl::StatusCode::kInvalidArgument);

  // Python, exec'd by a verified process of this executable, asks on its
  // socket: client "others", whose rule shares with no one. (Judged as the
  // session, it would have been told NOT_FOUND: it holds no such buffer.)
  absl::StatusOr<v1::BrokerReply> reply =
      AskedAfterExec(path, ShareRequest(7, uint64_t{1} << 40, "trusted"));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id(), 7u);
  EXPECT_EQ(reply->code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
}

TEST_F(BrokerIdentityTest, ARevokeIsAnsweredOnTheBrokerAndEndsTheGrant) {
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->welcome.broker_revoke());
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocatePage(owner->fd.get(), &id, &page));
  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), ShareRequest(2, id, "trusted"));
  ASSERT_TRUE(shared.ok() && ReplyStatus(shared->reply).ok());
  const v1::Grant grant = shared->reply.share().grant();
  const auto revoke = [](uint64_t request_id, uint64_t grant_id) {
    v1::BrokerRequest req;
    req.set_request_id(request_id);
    req.mutable_revoke()->set_grant_id(grant_id);
    return req;
  };
  // Another session may not revoke it: to that session it does not exist.
  absl::StatusOr<BrokerConnection> other = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Answer> stranger = Ask(other->fd.get(), revoke(3, grant.id()));
  ASSERT_TRUE(stranger.ok()) << stranger.status();
  EXPECT_EQ(ReplyStatus(stranger->reply).code(), absl::StatusCode::kNotFound);

  absl::StatusOr<Answer> revoked = Ask(owner->fd.get(), revoke(4, grant.id()));
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->reply.request_id(), 4u);
  EXPECT_TRUE(ReplyStatus(revoked->reply).ok()) << ReplyStatus(revoked->reply);
  EXPECT_TRUE(revoked->reply.has_revoke());
  EXPECT_TRUE(revoked->fds.empty());
  // The token imports no more; the grant cannot be revoked twice.
  absl::StatusOr<Answer> late = Ask(other->fd.get(), ImportRequest(5, grant.token()));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(ReplyStatus(late->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(late->fds.empty());
  absl::StatusOr<Answer> again = Ask(owner->fd.get(), revoke(6, grant.id()));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ReplyStatus(again->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(again->reply.has_revoke());
}

// A grant keeps its sharer, judged again at each Import: one made on the
// broker under a policy without executable rules keeps the verified
// executable, so that a policy reloaded with such rules still matches it.
TEST_F(BrokerIdentityTest, AGrantMadeOnTheBrokerKeepsItsSharersExecutable) {
  absl::StatusOr<std::shared_ptr<const Policy>> plain = Policy::Parse(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE share_to: \"*\" receive_from: \"*\" }\n",
      "broker_identity_test");
  ASSERT_TRUE(plain.ok()) << plain.status();
  core_->SetPolicy(*plain);
  ASSERT_FALSE(core_->policy()->matches_exe());
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocatePage(owner->fd.get(), &id, &page));
  v1::BrokerRequest share;
  share.set_request_id(2);
  share.mutable_share()->set_buffer_id(id);
  share.mutable_share()->mutable_peer()->set_uid(::getuid());
  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), share);
  ASSERT_TRUE(shared.ok() && ReplyStatus(shared->reply).ok());

  // Now only this executable (client "trusted") shares with anyone.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got =
      Ask(importer->fd.get(), ImportRequest(3, shared->reply.share().grant().token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok())
      << ReplyStatus(got->reply) << " (the grant's sharer lost its executable)";
  EXPECT_EQ(got->fds.size(), 1u);
}

}  // namespace
}  // namespace halloc
