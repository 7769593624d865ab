// Attacks on executable rules against a real hallocd binary, each one
// that once worked (issue #10): borrowing a trusted rule by
// connect-then-exec or by a verify sent before an exec, and spoofing one
// with a copy or a bind mount in another mount namespace.
#include "tests/integration/abuse_fixture.h"

namespace halloc {
namespace {

// Waits until `pid` executes `exe`.
bool WaitExec(pid_t pid, const std::string& exe) {
  for (int i = 0; i < 2000; ++i) {
    std::error_code ec;
    if (std::filesystem::read_symlink(absl::StrCat("/proc/", pid, "/exe"), ec).string() == exe) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

TEST_F(AbuseTest, ConnectThenExecCannotLendTheTrustedRuleToTheParent) {
  const std::string sleep_bin = RealPath("/bin/sleep");
  StartDaemon(TrustedOnly(sleep_bin));
  // The parent makes the socket; the child connects it (so hallocd sees the
  // child), keeps it across exec and becomes the trusted binary.
  UniqueFd sock(::socket(AF_UNIX, SOCK_SEQPACKET, 0));  // no CLOEXEC
  ASSERT_TRUE(sock);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, opts_.broker_socket.c_str(), sizeof(addr.sun_path) - 1);
  const pid_t child = fork();
  if (child == 0) {
    if (connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) _exit(1);
    execl(sleep_bin.c_str(), "sleep", "30", nullptr);
    _exit(127);
  }
  ASSERT_TRUE(WaitExec(child, sleep_bin));
  // The parent answers the challenge: refused, and no token ever comes.
  ASSERT_TRUE(WaitReadable(sock.get(), 5000).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(sock.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  v1::BrokerFrame hello;
  ASSERT_TRUE(hello.ParseFromString(rec->bytes));
  ASSERT_TRUE(hello.has_hello());
  EXPECT_EQ(hello.hello().pid(), child);
  v1::BrokerRequest verify;
  verify.mutable_verify()->set_challenge(hello.hello().challenge());
  ASSERT_TRUE(SendRecord(sock.get(), verify.SerializeAsString(), {}, false).ok());
  ASSERT_TRUE(WaitReadable(sock.get(), 5000).ok());
  rec = ReceiveRecord(sock.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  v1::BrokerFrame reply;
  ASSERT_TRUE(reply.ParseFromString(rec->bytes));
  ASSERT_TRUE(reply.has_reply());
  EXPECT_EQ(reply.reply().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(absl::StrContains(reply.reply().message(), "process that connected"))
      << reply.reply().message();
  EXPECT_FALSE(reply.reply().has_welcome());
  // hallocd hung up; a fast-path request gets nothing.
  v1::BrokerRequest alloc;
  alloc.mutable_allocate()->mutable_desc()->set_size(4096);
  (void)SendRecord(sock.get(), alloc.SerializeAsString(), {}, false);
  ASSERT_TRUE(WaitReadable(sock.get(), 5000).ok());
  EXPECT_TRUE(absl::IsUnavailable(ReceiveRecord(sock.get(), false).status()));
  EXPECT_EQ(Stats().live_buffers(), 0u);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

// Child "verify-then-exec" (args: broker socket path, an unconnected
// socket's fd, the token pipe's fd, the binary to exec): connects the
// socket and verifies while still the test binary, hands the token over,
// then becomes the other binary.
int VerifyThenExec(absl::Span<const std::string> args, int) {
  int sock = -1, token_pipe = -1;
  if (args.size() != 4 || !absl::SimpleAtoi(args[1], &sock) ||
      !absl::SimpleAtoi(args[2], &token_pipe)) {
    return 5;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, args[0].c_str(), sizeof(addr.sun_path) - 1);
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return 1;
  absl::StatusOr<BrokerConnection> c = Handshake(UniqueFd(dup(sock)), absl::Seconds(5));
  if (!c.ok()) return 2;
  const std::string& token = c->welcome.session_token();
  if (write(token_pipe, token.data(), token.size()) < 0) return 3;
  execl(args[3].c_str(), "sleep", "30", nullptr);
  return 127;
}
HALLOC_TEST_CHILD("verify-then-exec", VerifyThenExec);

TEST_F(AbuseTest, AVerifyBeforeExecKeepsTheOldExecutable) {
  const std::string sleep_bin = RealPath("/bin/sleep");
  StartDaemon(TrustedOnly(sleep_bin));
  UniqueFd sock(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, opts_.broker_socket.c_str(), sizeof(addr.sun_path) - 1);
  int token_pipe[2];
  ASSERT_EQ(pipe2(token_pipe, O_CLOEXEC), 0);
  UniqueFd token_r(token_pipe[0]), token_w(token_pipe[1]);
  absl::StatusOr<TestChild> child = TestChild::Spawn(
      "verify-then-exec",
      {opts_.broker_socket, absl::StrCat(sock.get()), absl::StrCat(token_w.get()), sleep_bin},
      {sock.get(), token_w.get()});
  ASSERT_TRUE(child.ok()) << child.status();
  token_w.reset();
  char buf[128];
  const ssize_t n = read(token_r.get(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  const std::string token(buf, n);
  ASSERT_TRUE(WaitExec(child->pid(), sleep_bin));
  // gRPC with the token: judged as the executable verified, the test binary.
  auto stub = v1::Allocator::NewStub(grpc::CreateChannel(
      "unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata(kSessionMetadataKey, token);
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  EXPECT_EQ(stub->Allocate(&ctx, req, &resp).error_code(), grpc::PERMISSION_DENIED);
  // The broker with the shared socket: stamped with the parent's pid.
  v1::BrokerRequest breq;
  breq.set_request_id(7);
  *breq.mutable_allocate() = req;
  ASSERT_TRUE(SendRecord(sock.get(), breq.SerializeAsString(), {}, false).ok());
  ASSERT_TRUE(WaitReadable(sock.get(), 5000).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(sock.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  v1::BrokerFrame reply;
  ASSERT_TRUE(reply.ParseFromString(rec->bytes));
  ASSERT_TRUE(reply.has_reply());
  EXPECT_EQ(reply.reply().request_id(), 7u);
  EXPECT_EQ(reply.reply().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(rec->fds.empty());
  EXPECT_EQ(Stats().live_buffers(), 0u);
  child->Kill();
}

TEST_F(AbuseTest, TheTrustedRuleMatchesTheTrustedFileOnlyNotACopyOrABindMount) {
  const std::string peer = RealPath(Runfile("tests/integration/peer"));
  StartDaemon(TrustedOnly(peer));
  EXPECT_TRUE(absl::StartsWith(Peer(peer, "alloc 4096 0\n"), "ok ")) << Log();
  // A copy is another file.
  const std::string copy = dir_ / "peer-copy";
  std::filesystem::copy_file(peer, copy);
  std::filesystem::permissions(copy, std::filesystem::perms::owner_all);
  EXPECT_EQ(Peer(copy, "alloc 4096 0\n"), "err PERMISSION_DENIED\n");
  // The copy bind-mounted over the trusted path in a private mount
  // namespace: /proc/PID/exe names the trusted path, the file is the copy.
  int can_unshare[2];
  ASSERT_EQ(pipe(can_unshare), 0);
  const std::string out = Peer(peer, "alloc 4096 0\n", [&] {
    const bool ok = unshare(CLONE_NEWNS) == 0 &&
                    mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
                    mount(copy.c_str(), peer.c_str(), nullptr, MS_BIND, nullptr) == 0;
    const char c = ok ? '1' : '0';
    if (write(can_unshare[1], &c, 1) < 0) {}
    if (!ok) _exit(0);
  });
  close(can_unshare[1]);
  char c = '0';
  if (read(can_unshare[0], &c, 1) < 0) {}
  close(can_unshare[0]);
  if (c != '1') GTEST_SKIP() << "cannot make a mount namespace here (needs CAP_SYS_ADMIN)";
  EXPECT_EQ(out, "err PERMISSION_DENIED\n") << Log();
}

}  // namespace
}  // namespace halloc
