// Who a broker request speaks for: the kernel's stamp on each record, the
// verified process only while it is that process running that executable
// (pid reuse, exec, a socket handed on). Import, Share and Revoke on the
// broker, judged the same way: broker_grants_test.cc.
#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/broker.h"
#include "service/broker_identity_testing.h"
#include "service/broker_test_util.h"

namespace halloc {
namespace {

using testing::ChildArgv;
using testing::TestChild;

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

// IsSupported on the broker is judged for whoever sends it, as its
// Allocate would be: yes for the verified executable's rule, no (the
// reason and code its Allocate would get) once the process exec'd python.
TEST_F(BrokerIdentityTest, AnIsSupportedIsJudgedForWhoeverSendsIt) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  v1::BrokerRequest req;
  req.set_request_id(8);
  req.mutable_is_supported()->mutable_desc()->set_size(4096);
  absl::StatusOr<BrokerConnection> trusted = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(trusted.ok()) << trusted.status();
  EXPECT_TRUE(trusted->welcome.broker_is_supported());
  absl::StatusOr<Answer> yes = Ask(trusted->fd.get(), req);
  ASSERT_TRUE(yes.ok()) << yes.status();
  EXPECT_EQ(yes->reply.request_id(), 8u);
  EXPECT_EQ(yes->reply.code(), 0);
  ASSERT_TRUE(yes->reply.has_is_supported());
  EXPECT_TRUE(yes->reply.is_supported().supported()) << yes->reply.is_supported().reason();
  EXPECT_TRUE(yes->fds.empty());

  absl::StatusOr<v1::BrokerReply> no = AskedAfterExec(path_, req);
  ASSERT_TRUE(no.ok()) << no.status();
  EXPECT_EQ(no->code(), 0) << "IsSupported answers no in its reply, not as an error";
  ASSERT_TRUE(no->has_is_supported());
  EXPECT_FALSE(no->is_supported().supported());
  EXPECT_EQ(no->is_supported().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(absl::StrContains(no->is_supported().reason(), "others"))
      << no->is_supported().reason();
}

// Child "connect-then-drop" (args: broker socket, "all" or "real"):
// connects as root, then changes its uid and gid to 65534 in place, all
// three ("all": privileges dropped) or the real ones alone ("real": as a
// setuid-root program run by that uid); exits with the status code of one
// fast-path Allocate on the session it opened as root (100+: did not get
// that far).
int ConnectThenDrop(absl::Span<const std::string> args, int) {
  if (args.size() != 2) return 100;
  absl::StatusOr<BrokerConnection> c = ConnectBroker(args[0], absl::Seconds(10));
  if (!c.ok()) return 101;
  const bool all = args[1] == "all";
  const uid_t kept = all ? 65534 : 0;
  if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, kept, kept) != 0 ||
      ::setresuid(65534, kept, kept) != 0) {
    return 102;
  }
  return AllocateCode(c->fd.get());
}
HALLOC_TEST_CHILD("connect-then-drop", ConnectThenDrop);

// A process that drops its privileges in place after connecting speaks
// as what it is now, not as the session it opened (a review helper's
// attack: root's session kept root's rule after a drop to another uid); a
// setuid program (its real uid another, its effective one the session's)
// is still the session.
TEST_F(BrokerIdentityTest, AProcessThatDroppedItsUidInPlaceIsJudgedAsItsNewUid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as root and change uid";
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
      "clients { name: \"root\" match { uids: 0 } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE }\n",
      "broker_identity_test");
  ASSERT_TRUE(policy.ok()) << policy.status();
  core_->SetPolicy(*policy);
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  for (const char* how : {"all", "real"}) {
    SCOPED_TRACE(how);
    absl::StatusOr<TestChild> child = TestChild::Spawn("connect-then-drop", {path_, how}, {});
    ASSERT_TRUE(child.ok()) << child.status();
    const std::optional<int> status = child->Wait(absl::Seconds(30));
    ASSERT_TRUE(status && WIFEXITED(*status)) << status.value_or(-1);
    if (WEXITSTATUS(*status) == 102) GTEST_SKIP() << "cannot change a process's uid here";
    const int want = absl::string_view(how) == "all"
                         ? static_cast<int>(absl::StatusCode::kPermissionDenied)  // no rule
                         : 0;
    EXPECT_EQ(WEXITSTATUS(*status), want);
  }
}

}  // namespace
}  // namespace halloc
