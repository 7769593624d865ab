// Attacks on a real hallocd binary, each one that once worked (issue #10):
// borrowing an executable rule by connect-then-exec, spoofing one with a
// bind mount in another mount namespace, exhausting hallocd's fds from one
// uid, forging log lines through an executable's path, and fds cut by a
// client's fd limit. Each test asserts the attack fails and that the daemon
// is left serving.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "tests/integration/hallocd_process.h"

namespace halloc {
namespace {

using testing::HallocdProcess;
using testing::Runfile;

std::string RealPath(const std::string& path) {
  return std::filesystem::canonical(path).string();
}

// Runs `argv` with `stdin_text` as its input and returns its output.
std::string RunWithInput(const std::vector<std::string>& argv, const std::string& input,
                         const std::function<void()>& in_child = nullptr) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (in_child) in_child();
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  if (write(in[1], input.data(), input.size()) < 0) {}
  close(in[1]);
  std::string output;
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) output.append(buf, n);
  close(out[0]);
  waitpid(pid, nullptr, 0);
  return output;
}

class AbuseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-abuse-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    chmod(tmpl, 0755);  // other uids reach the sockets in it

  }
  void TearDown() override {
    daemon_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Starts hallocd with `policy` (text), at most `nofile` fds when given.
  void StartDaemon(const std::string& policy, rlim_t nofile = 0,
                   std::vector<std::string> flags = {}) {
    absl::StatusOr<std::unique_ptr<HallocdProcess>> d =
        HallocdProcess::Start(dir_, {policy, nofile, std::move(flags)});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    pid_ = daemon_->pid();
    opts_ = daemon_->connect_options();
  }
  std::string Log() const { return daemon_->Log(); }
  v1::StatsResponse Stats() {
    auto stub = v1::Allocator::NewStub(grpc::CreateChannel(
        "unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::StatsResponse resp;
    stub->Stats(&ctx, v1::StatsRequest(), &resp);
    return resp;
  }
  // A peer running `exe` (the peer binary or a copy of it) as uid 0.
  std::string Peer(const std::string& exe, const std::string& commands,
                   const std::function<void()>& in_child = nullptr) {
    return RunWithInput({exe, opts_.control_socket, opts_.broker_socket, "shell", "0"},
                        commands + "quit\n", in_child);
  }
  // A rule granting everything to processes that run `exe`, and nothing to
  // anyone else.
  static std::string TrustedOnly(const std::string& exe) {
    return absl::StrCat("clients { name: \"trusted\" match { exe: \"", exe,
                        "\" } usages: \"*\" heaps: \"*\" max_cpu_access: "
                        "CPU_ACCESS_READ_WRITE }\n"
                        "clients { name: \"others\" match { any: true } }\n");
  }

  std::string dir_;
  ConnectOptions opts_;
  std::unique_ptr<HallocdProcess> daemon_;
  pid_t pid_ = -1;
};

// Waits until `pid` executes `exe`.
bool WaitExec(pid_t pid, const std::string& exe) {
  for (int i = 0; i < 500; ++i) {
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

TEST_F(AbuseTest, AVerifyBeforeExecKeepsTheOldExecutable) {
  const std::string sleep_bin = RealPath("/bin/sleep");
  StartDaemon(TrustedOnly(sleep_bin));
  UniqueFd sock(::socket(AF_UNIX, SOCK_SEQPACKET, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, opts_.broker_socket.c_str(), sizeof(addr.sun_path) - 1);
  int token_pipe[2];
  ASSERT_EQ(pipe(token_pipe), 0);
  const pid_t child = fork();
  if (child == 0) {
    // Verifies while still the test binary, hands the token to its parent,
    // then becomes the trusted binary.
    if (connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) _exit(1);
    absl::StatusOr<BrokerConnection> c = Handshake(UniqueFd(dup(sock.get())), absl::Seconds(5));
    if (!c.ok()) _exit(2);
    const std::string& token = c->welcome.session_token();
    if (write(token_pipe[1], token.data(), token.size()) < 0) _exit(3);
    execl(sleep_bin.c_str(), "sleep", "30", nullptr);
    _exit(127);
  }
  close(token_pipe[1]);
  char buf[128];
  const ssize_t n = read(token_pipe[0], buf, sizeof(buf));
  close(token_pipe[0]);
  ASSERT_GT(n, 0);
  const std::string token(buf, n);
  ASSERT_TRUE(WaitExec(child, sleep_bin));
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
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

TEST_F(AbuseTest, TheTrustedRuleMatchesTheTrustedFileOnlyNotACopyOrABindMount) {
  const std::string peer = RealPath(Runfile("tests/integration/peer"));
  StartDaemon(TrustedOnly(peer));
  EXPECT_TRUE(absl::StartsWith(Peer(peer, "alloc 4096 0\n"), "ok ")) << Log();
  // A copy is another file.
  const std::string copy = dir_ + "/peer-copy";
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

// Everything for anyone, at most 3 connections per uid.
constexpr char kThreePerUid[] =
    "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
    "max_cpu_access: CPU_ACCESS_READ_WRITE }\n"
    "sessions { max_per_uid: 3 }\n";

// Runs `body` in a child as uid/gid 1001: its exit code, or -1 when this
// process cannot switch uids (not root).
int ExitCodeAsUid1001(const std::function<int()>& body) {
  const pid_t child = fork();
  if (child == 0) {
    if (setgid(1001) != 0 || setuid(1001) != 0) _exit(100);
    _exit(body());
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status)) return -2;
  return WEXITSTATUS(status) == 100 ? -1 : WEXITSTATUS(status);
}

TEST_F(AbuseTest, OneUidCannotHoldMoreConnectionsThanItsLimit) {
  StartDaemon(kThreePerUid);
  const int code = ExitCodeAsUid1001([&] {
    std::vector<BrokerConnection> held;
    int refused = 0;
    for (int i = 0; i < 6; ++i) {
      absl::StatusOr<BrokerConnection> c = ConnectBroker(opts_.broker_socket, absl::Seconds(5));
      if (c.ok()) {
        held.push_back(*std::move(c));
      } else if (absl::IsResourceExhausted(c.status()) &&
                 absl::StrContains(c.status().message(), "limit per uid is 3")) {
        ++refused;
      }
    }
    return static_cast<int>(held.size()) * 10 + refused;
  });
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  EXPECT_EQ(code, 33);  // 3 served, 3 refused with the reason
  // Other uids (root here) are unaffected.
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Allocate(BlobDescriptor(4096)).ok());
}

TEST_F(AbuseTest, OneUidCannotHoldMoreControlConnectionsThanItsLimit) {
  // gRPC itself takes any number of connections from anyone: hallocd
  // accepts on the control socket and hands gRPC only those it admits.
  StartDaemon(kThreePerUid);
  const int code = ExitCodeAsUid1001([&] {
    std::vector<int> open_ones;
    int ended = 0;
    for (int i = 0; i < 6; ++i) {
      const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      strncpy(addr.sun_path, opts_.control_socket.c_str(), sizeof(addr.sun_path) - 1);
      if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return 101;
      // A refused one is closed at once; an admitted one stays open (gRPC
      // greets it with its SETTINGS frame).
      pollfd p{fd, POLLIN, 0};
      char c;
      if (poll(&p, 1, 5000) == 1 && read(fd, &c, 1) == 0) {
        ++ended;
        close(fd);
      } else {
        open_ones.push_back(fd);
      }
    }
    return static_cast<int>(open_ones.size()) * 10 + ended;
  });
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  EXPECT_EQ(code, 33);  // 3 served, 3 closed at once
  EXPECT_TRUE(absl::StrContains(Log(), "the limit per uid is 3")) << Log();
  // The child's exit closed its 3; other uids (root here) were never limited.
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Stats().ok());
}

// Ticks of CPU time `pid` has used.
long CpuTicks(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close_paren = stat.rfind(')');
  std::vector<std::string> f = absl::StrSplit(stat.substr(close_paren + 2), ' ');
  return std::stol(f[11]) + std::stol(f[12]);  // utime + stime
}

TEST_F(AbuseTest, RunningOutOfFdsNeitherSpinsNorFloodsTheLogNorLocksClientsOut) {
  // Limits high enough that only the fd table stops the flood.
  StartDaemon("clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
              "max_cpu_access: CPU_ACCESS_READ_WRITE }\n"
              "sessions { max_per_uid: 100000 max_total: 100000 }\n",
              /*nofile=*/64);
  ASSERT_TRUE(Client::Connect(opts_).ok()) << Log();
  std::vector<UniqueFd> flood;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<UniqueFd> fd = ConnectSeqpacket(opts_.broker_socket);
    if (fd.ok()) flood.push_back(*std::move(fd));
  }
  absl::SleepFor(absl::Milliseconds(300));
  const long before = CpuTicks(pid_);
  absl::SleepFor(absl::Seconds(1));
  const long used = CpuTicks(pid_) - before;
  EXPECT_LT(used, sysconf(_SC_CLK_TCK) / 5) << "hallocd spins at EMFILE";
  const std::string log = Log();
  int accept_lines = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    accept_lines += absl::StrContains(line, "accept4");
  }
  EXPECT_GT(accept_lines, 0) << "the flood never reached EMFILE; log:\n" << log;
  EXPECT_LE(accept_lines, 20) << "outsider-triggered lines are not rate-limited";
  flood.clear();
  // Once the flood lets go, clients get in again.
  absl::Status s = absl::UnavailableError("not tried");
  for (int i = 0; i < 300 && !s.ok(); ++i) {
    absl::StatusOr<Client> c = Client::Connect(opts_);
    s = c.ok() ? c->Allocate(BlobDescriptor(4096)).status() : c.status();
    if (!s.ok()) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(AbuseTest, ThousandsOfConcurrentCallsCannotGrowHallocdsThreads) {
  // hallocd's defaults (32 call threads). Without the bound this reached
  // over 2000 threads.
  StartDaemon("clients { name: \"all\" match { any: true } }\n");
  auto stub = v1::Allocator::NewStub(grpc::CreateChannel(
      "unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
  struct Call {
    grpc::ClientContext ctx;
    v1::IsSupportedResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::IsSupportedResponse>> rpc;
  };
  grpc::CompletionQueue cq;
  v1::IsSupportedRequest req;
  req.mutable_desc()->mutable_image()->set_width(4096);
  req.mutable_desc()->mutable_image()->set_height(4096);
  req.mutable_desc()->mutable_image()->set_format(0x3231564e);  // NV12
  const int before = daemon_->Threads();
  int peak = before;
  std::vector<std::unique_ptr<Call>> calls;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 1000; ++i) {
      auto c = std::make_unique<Call>();
      c->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
      c->rpc = stub->AsyncIsSupported(&c->ctx, req, &cq);
      c->rpc->Finish(&c->resp, &c->status, c.get());
      calls.push_back(std::move(c));
      if (i % 50 == 0) peak = std::max(peak, daemon_->Threads());
    }
  }
  int ok = 0, exhausted = 0;
  for (size_t done = 0; done < calls.size(); ++done) {
    void* tag;
    bool fine;
    if (!cq.Next(&tag, &fine)) break;
    const grpc::Status& s = static_cast<Call*>(tag)->status;
    ok += s.ok();
    exhausted += s.error_code() == grpc::RESOURCE_EXHAUSTED;
    if (done % 100 == 0) peak = std::max(peak, daemon_->Threads());
  }
  EXPECT_EQ(ok + exhausted, 4000) << "calls failed otherwise";
  EXPECT_GT(ok, 0);
  // gRPC's own pollers and timers, and at most 32 call threads.
  EXPECT_LE(peak, before + 40) << "threads before: " << before;
  absl::StatusOr<Client> c = Client::Connect(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
}

TEST_F(AbuseTest, AnExecutablePathCannotForgeALogLine) {
  StartDaemon("clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
              "max_cpu_access: CPU_ACCESS_READ_WRITE }\n");
  const std::string forged = "W1201 00:00:00.000000 1 forged.cc:1] AUDIT forged";
  const std::string evil = dir_ + "/evil\n" + forged;
  std::filesystem::copy_file(RealPath(Runfile("tests/integration/peer")), evil);
  std::filesystem::permissions(evil, std::filesystem::perms::owner_all);
  EXPECT_TRUE(absl::StartsWith(Peer(evil, "alloc 4096 0\n"), "ok "));
  absl::SleepFor(absl::Milliseconds(100));
  const std::string log = Log();
  EXPECT_TRUE(absl::StrContains(log, "evil\\n")) << log;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    EXPECT_FALSE(absl::StartsWith(line, "W1201 00:00:00")) << "forged line:\n" << log;
  }
}

TEST_F(AbuseTest, FdsCutByTheClientsFdLimitAreGivenBack) {
  StartDaemon("clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
              "max_cpu_access: CPU_ACCESS_READ_WRITE }\n");
  const std::string out =
      Peer(Runfile("tests/integration/peer"), "nofile\nalloc 4096 0\nalloc 4096 0\n");
  EXPECT_EQ(out, "ok\nerr RESOURCE_EXHAUSTED\nerr RESOURCE_EXHAUSTED\n");
  // hallocd reported success, but the client gave the buffers back.
  for (int i = 0; i < 300 && Stats().live_buffers() != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(Stats().live_buffers(), 0u);
  EXPECT_EQ(Stats().allocations_total(), 2u);
}

TEST_F(AbuseTest, ReleasingWhileKeepingTheMemoryCannotGoPastTheQuota) {
  // Allocate, keep the fd (or a mapping), Release, repeat: before, each
  // Release gave the charge back and memory grew without bound.
  StartDaemon("clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
              "max_cpu_access: CPU_ACCESS_READ_WRITE quota_buffers: 2 }\n");
  absl::StatusOr<Client> c = Client::Connect(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<UniqueFd> kept;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(1 << 16));
    ASSERT_TRUE(b.ok()) << b.status();
    absl::StatusOr<UniqueFd> fd = b->TakeFd();
    ASSERT_TRUE(fd.ok()) << fd.status();
    kept.push_back(*std::move(fd));
    ASSERT_TRUE(c->Release(b->id()).ok());
  }
  absl::StatusOr<Buffer> more = c->Allocate(BlobDescriptor(1 << 16));
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted) << more.status();
  v1::StatsResponse s = Stats();
  EXPECT_EQ(s.live_buffers(), 0u);
  EXPECT_EQ(s.released_held_buffers(), 2u);
  EXPECT_EQ(s.released_held_bytes(), 2u << 16);
  // A mapping is a reference too: closing the fd alone gives nothing back.
  void* map = mmap(nullptr, 1 << 16, PROT_READ, MAP_SHARED, kept[0].get(), 0);
  ASSERT_NE(map, MAP_FAILED);
  kept[0].reset();
  more = c->Allocate(BlobDescriptor(1 << 16));
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted) << more.status();
  ASSERT_EQ(munmap(map, 1 << 16), 0);
  more = c->Allocate(BlobDescriptor(1 << 16));
  EXPECT_TRUE(more.ok()) << "its memory is gone: " << more.status();
  kept.clear();
  EXPECT_EQ(Stats().released_held_buffers(), 0u);
}

}  // namespace
}  // namespace halloc
