// Attacks on a real hallocd binary, each one that once worked (issue #10):
// exhausting hallocd's fds or threads from one uid, forging log lines
// through an executable's path, fds cut by a client's fd limit, and memory
// kept past a quota. Each test asserts the attack fails and that the daemon
// is left serving. (Borrowing or spoofing an executable rule:
// exe_rules_test.cc; requests too large to read: request_size_test.cc.)
#include <fstream>

#include "tests/integration/abuse_fixture.h"

namespace halloc {
namespace {

// Everything for anyone, at most 3 connections per uid.
constexpr char kThreePerUid[] =
    "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
    "max_cpu_access: CPU_ACCESS_READ_WRITE }\n"
    "sessions { max_per_uid: 3 }\n";

// A uid-1001 child's exit code when it cannot switch uids (not root).
constexpr int kCannotSwitchUid = 100;

// Runs the test child `name` with `args` (its main switches to uid/gid
// 1001 first, exiting kCannotSwitchUid if it cannot): its exit code, -1
// when this process cannot switch uids, -2 if it did not exit.
int ExitCodeAsUid1001(const std::string& name, std::vector<std::string> args = {}) {
  absl::StatusOr<TestChild> child = TestChild::Spawn(name, std::move(args));
  if (!child.ok()) return -2;
  const std::optional<int> status = child->Wait(absl::Seconds(30));
  if (!status || !WIFEXITED(*status)) return -2;
  return WEXITSTATUS(*status) == kCannotSwitchUid ? -1 : WEXITSTATUS(*status);
}

bool BecomeUid1001() { return setgid(1001) == 0 && setuid(1001) == 0; }

// A child's exit code for arguments it cannot use (a test's mistake: a
// failure, never taken for a skip).
constexpr int kBadArgs = 99;

// Child "held-connections" (args: broker socket), as uid 1001: tries 6
// broker connections, holds those served; exits with served * 10 + refused
// (for the per-uid limit of 3).
int HeldConnections(absl::Span<const std::string> args, int) {
  if (args.size() != 1) return kBadArgs;
  if (!BecomeUid1001()) return kCannotSwitchUid;
  std::vector<BrokerConnection> held;
  int refused = 0;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<BrokerConnection> c = ConnectBroker(args[0], absl::Seconds(5));
    if (c.ok()) {
      held.push_back(*std::move(c));
    } else if (absl::IsResourceExhausted(c.status()) &&
               absl::StrContains(c.status().message(), "limit per uid is 3")) {
      ++refused;
    }
  }
  return static_cast<int>(held.size()) * 10 + refused;
}
HALLOC_TEST_CHILD("held-connections", HeldConnections);

TEST_F(AbuseTest, OneUidCannotHoldMoreConnectionsThanItsLimit) {
  StartDaemon(kThreePerUid);
  const int code = ExitCodeAsUid1001("held-connections", {opts_.broker_socket});
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  EXPECT_EQ(code, 33);  // 3 served, 3 refused with the reason
  // Other uids (root here) are unaffected.
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Allocate(BlobDescriptor(4096)).ok());
}

// Child "connect-loop" (args: broker socket), as uid 1001: 30 broker
// connections as fast as it can, each closed once answered (its Hello, or
// a refusal), then one more through libhalloc's ConnectBroker, which
// waits out the rate. Exits with the number refused for its rate, plus
// 100 if that last connect failed.
int ConnectLoop(absl::Span<const std::string> args, int) {
  if (args.size() != 1) return kBadArgs;
  if (!BecomeUid1001()) return kCannotSwitchUid;
  int refused = 0;
  for (int i = 0; i < 30; ++i) {
    absl::StatusOr<UniqueFd> c = ConnectSeqpacket(args[0], absl::Seconds(5));
    if (!c.ok()) return 98;
    absl::StatusOr<v1::BrokerFrame> frame = NextFrame(c->get(), absl::Now() + absl::Seconds(5));
    if (!frame.ok()) return 98;
    if (frame->has_hello()) continue;
    const absl::Status s = ReplyStatus(frame->reply());
    if (!absl::IsResourceExhausted(s) ||
        !absl::StrContains(s.message(), "faster than 5 a second") ||
        frame->reply().retry_after_ms() == 0) {
      std::fprintf(stderr, "connect-loop: %s\n", s.ToString().c_str());
      return 97;
    }
    ++refused;
  }
  return refused + (ConnectBroker(args[0], absl::Seconds(10)).ok() ? 0 : 100);
}
HALLOC_TEST_CHILD("connect-loop", ConnectLoop);

// A uid connecting in a loop gets its burst (twice the policy's rate, or
// its connection limit if more), then is refused with the reason and when
// to try again until its bucket refills; libhalloc then waits and is
// served. hallocd counts the refusals, and other uids (root here) connect
// as before.
TEST_F(AbuseTest, ConnectingInALoopIsHeldToTheUidsRate) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE }\n"
      "sessions { max_per_uid: 10 connects_per_second: 5 }\n");
  const int code = ExitCodeAsUid1001("connect-loop", {opts_.broker_socket});
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  // 10 served at once and one more per 200 ms the loop took (ms here):
  // at least 10 of the 30 refused; and the last connect served.
  EXPECT_GE(code, 10);
  EXPECT_LT(code, 100) << "libhalloc's connect did not wait out the rate";
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Allocate(BlobDescriptor(4096)).ok());
  absl::StatusOr<v1::StatsResponse> stats = root->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  // The loop's refusals, and the last connect's first try.
  EXPECT_GE(stats->connections_rate_limited_total(), static_cast<uint64_t>(code % 100));
  EXPECT_LE(stats->connections_rate_limited_total(), static_cast<uint64_t>(code % 100) + 1);
}

// Child "subordinate" (args: broker socket, fds go, ready and done,
// "allocate" or not, "root" or "1001": whose namespace, its uid in it,
// "nest" or not), see SubordinateConnect.
int Subordinate(absl::Span<const std::string> args, int report) {
  int go = -1, ready = -1, done = -1;
  uid_t inside = 0;
  if (args.size() != 8 || !absl::SimpleAtoi(args[1], &go) || !absl::SimpleAtoi(args[2], &ready) ||
      !absl::SimpleAtoi(args[3], &done) || !absl::SimpleAtoi(args[6], &inside)) {
    return kBadArgs;
  }
  const bool allocate = args[4] == "allocate";
  const bool roots = args[5] == "root";
  char c = 0;
  if ((!roots && !BecomeUid1001()) || unshare(CLONE_NEWUSER) != 0) return kCannotSwitchUid;
  WriteAll(report, "u\n");  // in its namespace: map it
  if (read(go, &c, 1) != 1 || setgid(inside) != 0 || setuid(inside) != 0) return 101;
  // A namespace of its own, as its uid (none of the container's is left
  // in the container's namespace).
  if (args[7] == "nest" && unshare(CLONE_NEWUSER) != 0) return kCannotSwitchUid;
  absl::StatusOr<BrokerConnection> conn = ConnectBroker(args[0], absl::Seconds(5));
  if (absl::IsPermissionDenied(conn.status()) &&
      absl::StrContains(conn.status().message(), "cannot tell whose")) {
    (void)!write(ready, "p", 1);
    return 3;
  }
  const bool limited = absl::IsResourceExhausted(conn.status()) &&
                       absl::StrContains(conn.status().message(), "limit per uid is 1");
  const char* said = conn.ok() ? "c" : "r";
  if (conn.ok() && allocate) {
    v1::BrokerRequest req;
    req.set_request_id(1);
    req.mutable_allocate()->mutable_desc()->set_size(4096);
    absl::StatusOr<Record> rec = absl::UnavailableError("not sent");
    if (SendRecord(conn->fd.get(), req.SerializeAsString(), {}, false).ok() &&
        WaitReadable(conn->fd.get(), 5000).ok()) {
      rec = ReceiveRecord(conn->fd.get(), false);
    }
    v1::BrokerFrame frame;
    const absl::Status s = rec.ok() && frame.ParseFromString(rec->bytes) && frame.has_reply()
                               ? ReplyStatus(frame.reply())
                               : absl::DataLossError("no reply");
    if (!s.ok()) std::fprintf(stderr, "subordinate allocate: %s\n", s.ToString().c_str());
    said = s.ok()                                                                    ? "a"
           : absl::IsResourceExhausted(s) && absl::StrContains(s.message(), "quota") ? "q"
                                                                                     : "e";
  }
  (void)!write(ready, said, 1);
  if (!conn.ok()) return limited ? 2 : 102;
  (void)!read(done, &c, 1);  // holds its session until a byte comes
  return 0;
}
HALLOC_TEST_CHILD("subordinate", Subordinate);

// A child of uid 1001 (or, `roots`, of root: a container's) in a user
// namespace of its own that maps `count` uids from `first_outside` (as
// newuidmap does for a login's subordinate uids; the map written by this
// root process), connecting to the broker as uid `inside` of it: outside,
// uid first_outside + inside (`nest`: from a namespace of its own, made as
// that uid). Its exit code: 0 when it held a
// session until a byte came on `done`, 2 when refused for the per-uid limit, else
// an error code; `ready` gets a byte once it knows: 'c' connected, 'r'
// refused, or with `allocate` (one 4 KiB buffer, held too) 'a' allocated,
// 'q' refused for a quota, 'e' another error.
absl::StatusOr<TestChild> SubordinateConnect(const std::string& broker, uid_t first_outside,
                                             int ready, int done, bool allocate, bool roots,
                                             uid_t inside = 1, uint32_t count = 10,
                                             bool nest = false) {
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) return absl::InternalError("pipe2");
  UniqueFd go_r(go[0]), go_w(go[1]);
  absl::StatusOr<TestChild> child =
      TestChild::Spawn("subordinate",
                       {broker, absl::StrCat(go_r.get()), absl::StrCat(ready), absl::StrCat(done),
                        allocate ? "allocate" : "connect", roots ? "root" : "1001",
                        absl::StrCat(inside), nest ? "nest" : "flat"},
                       {go_r.get(), ready, done});
  if (!child.ok()) return child.status();
  bool mapped = child->Line() == "u";
  for (const char* map : {"uid_map", "gid_map"}) {
    std::ofstream f(absl::StrCat("/proc/", child->pid(), "/", map));
    f << "0 " << first_outside << " " << count << "\n";
    f.close();
    mapped = mapped && f.good();
  }
  (void)!write(go_w.get(), mapped ? "g" : "x", 1);
  return child;
}

// Whether uid 1001 may make a user namespace here.
int MakesUserNamespace(absl::Span<const std::string>, int) {
  if (!BecomeUid1001()) return kCannotSwitchUid;
  return unshare(CLONE_NEWUSER) == 0 ? 0 : 1;
}
HALLOC_TEST_CHILD("makes-user-namespace", MakesUserNamespace);

// Whether it may (a child that did not run, or did not exit, is the
// harness failing: an error, never taken for "no user namespaces here").
absl::StatusOr<bool> CanMakeUserNamespaceAs1001() {
  const int code = ExitCodeAsUid1001("makes-user-namespace");
  if (code == 0) return true;
  if (code == -1 || code == 1) return false;  // cannot switch uid; unshare refused
  if (code == -2) return absl::InternalError("the makes-user-namespace child did not run or exit");
  return absl::InternalError(absl::StrCat("the makes-user-namespace child exited ", code));
}

// Two processes of uid 1001's user namespaces (`roots`: of root's), seen
// by hallocd as uids 300001 and 300011, one after the other
// (SubordinateConnect): what each said, and how each ended once both had
// let go. Their namespaces map 10 uids each from 300000 and 300010, or
// (`one_map`: two processes of one container, as far as hallocd can tell)
// both 20 from 300000.
struct TwoSubordinates {
  char first = 0, second = 0;
  int first_status = -1, second_status = -1;
};
TwoSubordinates RunTwoSubordinates(const std::string& broker, bool allocate, bool roots = false,
                                   bool one_map = false) {
  TwoSubordinates t;
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(done, O_CLOEXEC) != 0) return t;
  UniqueFd ready_r(ready[0]), ready_w(ready[1]), done_r(done[0]), done_w(done[1]);
  // A byte from a child, or 0 if none came within 10 s (one that exited
  // early writes none, and this process holds the write end too).
  auto said = [&]() -> char {
    pollfd p{ready_r.get(), POLLIN, 0};
    char c = 0;
    return poll(&p, 1, 10000) == 1 && read(ready_r.get(), &c, 1) == 1 ? c : 0;
  };
  absl::StatusOr<TestChild> first = SubordinateConnect(broker, 300000, ready_w.get(), done_r.get(),
                                                       allocate, roots, 1, one_map ? 20 : 10);
  t.first = first.ok() ? said() : 0;
  absl::StatusOr<TestChild> second =
      one_map
          ? SubordinateConnect(broker, 300000, ready_w.get(), done_r.get(), allocate, roots, 11, 20)
          : SubordinateConnect(broker, 300010, ready_w.get(), done_r.get(), allocate, roots);
  t.second = second.ok() ? said() : 0;
  // Both let go (one byte each: the children hold the pipe's write end too).
  (void)!write(done_w.get(), "xx", 2);
  if (second.ok()) t.second_status = second->Wait(absl::Seconds(30)).value_or(-1);
  if (first.ok()) t.first_status = first->Wait(absl::Seconds(30)).value_or(-1);
  return t;
}

constexpr char kNoUserNamespace[] =
    "cannot make a user namespace as uid 1001 here (not root, or unprivileged user "
    "namespaces are off)";

// Subordinate uids are their owner to every per-uid limit: two processes of
// one user's namespaces, seen by hallocd as uids 300001 and 300011, share
// that user's (1001's) one session. Before, each uid of a namespace had a
// limit of its own: a login's 65,536 subordinate uids filled any total.
TEST_F(AbuseTest, SubordinateUidsShareTheirOwnersLimit) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" }\n"
      "sessions { max_per_uid: 1 }\n");
  const absl::StatusOr<bool> userns = CanMakeUserNamespaceAs1001();
  ASSERT_TRUE(userns.ok()) << userns.status();
  if (!*userns) GTEST_SKIP() << kNoUserNamespace;
  const TwoSubordinates t = RunTwoSubordinates(opts_.broker_socket, /*allocate=*/false);
  ASSERT_EQ(t.first, 'c') << "the first subordinate uid is served";
  EXPECT_TRUE(WIFEXITED(t.second_status) && WEXITSTATUS(t.second_status) == 2)
      << "a second subordinate uid of the same user got a session of its own ("
      << t.second_status << ")";
  EXPECT_TRUE(WIFEXITED(t.first_status) && WEXITSTATUS(t.first_status) == 0)
      << t.first_status;
}

// A container's uids (root's user namespaces) are one uid to every
// per-uid limit, charged as the uid its root is (its namespace's map),
// whether its range is in the subuid file or not (here: no range is): a
// container's root switching among its uids gets one session here, not
// one per uid. Before, each was charged as itself outside every listed
// range.
TEST_F(AbuseTest, AContainersUidsShareALimitListedOrNot) {
  const std::string subuid = dir_ / "subuid";
  std::ofstream(subuid) << "";
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" }\n"
      "sessions { max_per_uid: 1 }\n",
      0, {"--subuid_file=" + subuid});
  if (geteuid() != 0) GTEST_SKIP() << "making root's user namespaces needs root";
  const TwoSubordinates t = RunTwoSubordinates(opts_.broker_socket, /*allocate=*/false,
                                               /*roots=*/true, /*one_map=*/true);
  if (t.first == 0 && WIFEXITED(t.first_status) &&
      WEXITSTATUS(t.first_status) == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot make a user namespace here";
  }
  ASSERT_EQ(t.first, 'c') << "the container's first uid is served (" << t.first_status << ")";
  EXPECT_TRUE(WIFEXITED(t.second_status) && WEXITSTATUS(t.second_status) == 2)
      << "a second uid of the same container got a session of its own (" << t.second_status << ")";
  EXPECT_TRUE(WIFEXITED(t.first_status) && WEXITSTATUS(t.first_status) == 0) << t.first_status;
}

// Two containers given blocks of 10 uids from one 65,536-uid slice of
// root's range (as Podman's --userns=auto gives blocks from one range)
// get a session each under a limit of one. Before, they shared their
// slice's.
TEST_F(AbuseTest, ContainersInOneSliceOfRootsRangeHaveALimitEach) {
  const std::string subuid = dir_ / "subuid";
  std::ofstream(subuid) << "root:300000:65536\n";
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" }\n"
      "sessions { max_per_uid: 1 }\n",
      0, {"--subuid_file=" + subuid});
  if (geteuid() != 0) GTEST_SKIP() << "making root's user namespaces needs root";
  const TwoSubordinates t =
      RunTwoSubordinates(opts_.broker_socket, /*allocate=*/false, /*roots=*/true);
  if (t.first == 0 && WIFEXITED(t.first_status) &&
      WEXITSTATUS(t.first_status) == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot make a user namespace here";
  }
  EXPECT_EQ(t.first, 'c') << t.first_status;
  EXPECT_EQ(t.second, 'c') << "a second container in the same slice was refused ("
                           << t.second_status << ")";
  EXPECT_TRUE(WIFEXITED(t.first_status) && WEXITSTATUS(t.first_status) == 0) << t.first_status;
  EXPECT_TRUE(WIFEXITED(t.second_status) && WEXITSTATUS(t.second_status) == 0) << t.second_status;
}

// A container's uid that made a user namespace of its own, none of the
// container's processes left in the container's namespace: whose it is
// cannot be told (its map is read from a process in it), and it is
// refused with a reason, not charged as a uid of its choosing.
TEST_F(AbuseTest, AContainersUidBelowAnEmptyContainerIsRefusedWithAReason) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" }\n"
      "sessions { max_per_uid: 1 }\n");
  if (geteuid() != 0) GTEST_SKIP() << "making root's user namespaces needs root";
  int ready[2], done[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(done, O_CLOEXEC), 0);
  UniqueFd ready_r(ready[0]), ready_w(ready[1]), done_r(done[0]), done_w(done[1]);
  absl::StatusOr<TestChild> child =
      SubordinateConnect(opts_.broker_socket, 300000, ready_w.get(), done_r.get(),
                         /*allocate=*/false, /*roots=*/true, 1, 10, /*nest=*/true);
  ASSERT_TRUE(child.ok()) << child.status();
  ready_w.reset();
  done_r.reset();
  done_w.reset();
  pollfd p{ready_r.get(), POLLIN, 0};
  char said = 0;
  if (poll(&p, 1, 10000) == 1) (void)!read(ready_r.get(), &said, 1);
  const int status = child->Wait(absl::Seconds(30)).value_or(-1);
  if (said == 0 && WIFEXITED(status) && WEXITSTATUS(status) == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot make user namespaces (nested) here";
  }
  EXPECT_EQ(said, 'p') << "not refused as a process whose container cannot be told (" << status
                       << ")";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << status;
}

// And to memory quotas: the same two share 1001's quota of one buffer.
// Before, each subordinate uid had a quota of its own (65,536 quotas).
TEST_F(AbuseTest, SubordinateUidsShareTheirOwnersQuota) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE quota_buffers: 1 }\n");
  const absl::StatusOr<bool> userns = CanMakeUserNamespaceAs1001();
  ASSERT_TRUE(userns.ok()) << userns.status();
  if (!*userns) GTEST_SKIP() << kNoUserNamespace;
  const TwoSubordinates t = RunTwoSubordinates(opts_.broker_socket, /*allocate=*/true);
  EXPECT_EQ(t.first, 'a') << "the first subordinate uid allocates";
  EXPECT_EQ(t.second, 'q') << "a second subordinate uid of the same user had a quota of its own";
}

// Child "held-control-connections" (args: control socket), as uid 1001:
// opens 6 control connections, holds those gRPC greets; exits with held *
// 10 + closed at once (for the per-uid limit of 3).
int HeldControlConnections(absl::Span<const std::string> args, int) {
  if (args.size() != 1) return kBadArgs;
  if (!BecomeUid1001()) return kCannotSwitchUid;
  std::vector<int> open_ones;
  int ended = 0;
  for (int i = 0; i < 6; ++i) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, args[0].c_str(), sizeof(addr.sun_path) - 1);
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
}
HALLOC_TEST_CHILD("held-control-connections", HeldControlConnections);

TEST_F(AbuseTest, OneUidCannotHoldMoreControlConnectionsThanItsLimit) {
  // gRPC itself takes any number of connections from anyone: hallocd
  // accepts on the control socket and hands gRPC only those it admits.
  StartDaemon(kThreePerUid);
  const int code = ExitCodeAsUid1001("held-control-connections", {opts_.control_socket});
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  EXPECT_EQ(code, 33);  // 3 served, 3 closed at once
  EXPECT_TRUE(absl::StrContains(Log(), "the limit per uid is 3")) << Log();
  // The child's exit closed its 3; other uids (root here) were never limited.
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Stats().ok());
}

// Child "stats-as-user" (args: control socket, broker socket), as uid
// 1001: allocates one buffer, then reads Stats. Exits 0 when it saw the
// totals (2 live buffers) and only its own row; 10 + what went wrong.
int StatsAsUser(absl::Span<const std::string> args, int) {
  if (args.size() != 2) return kBadArgs;
  if (!BecomeUid1001()) return kCannotSwitchUid;
  ConnectOptions opts;
  opts.control_socket = args[0];
  opts.broker_socket = args[1];
  absl::StatusOr<Client> c = Client::Connect(opts);
  if (!c.ok()) return 10;
  absl::StatusOr<Buffer> held = c->Allocate(BlobDescriptor(4096));
  if (!held.ok()) return 11;
  absl::StatusOr<v1::StatsResponse> s = c->Stats();
  if (!s.ok()) return 12;
  if (!s->only_callers_uid()) return 13;
  if (s->live_buffers() != 2) return 14;
  if (!s->denials_by_rule().empty()) return 15;  // root's refusal
  if (s->clients_size() != 1 || s->clients(0).uid() != 1001 || s->clients(0).buffers() != 1) {
    return 16;
  }
  return 0;
}
HALLOC_TEST_CHILD("stats-as-user", StatsAsUser);

// Stats needs no session, so any local process may read it: what other
// users own and were refused is for root and hallocd's uid alone.
TEST_F(AbuseTest, StatsShowAUserOnlyItsOwnRows) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE quota_buffers: 1 }\n");
  absl::StatusOr<Client> root = Client::Connect(opts_);
  ASSERT_TRUE(root.ok()) << root.status();
  absl::StatusOr<Buffer> held = root->Allocate(BlobDescriptor(4096));
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(absl::IsResourceExhausted(root->Allocate(BlobDescriptor(4096)).status()));
  const int code = ExitCodeAsUid1001("stats-as-user", {opts_.control_socket, opts_.broker_socket});
  if (code == -1) GTEST_SKIP() << "cannot switch uids here (not root)";
  EXPECT_EQ(code, 0);
  // Root sees everything: both uids' rows and the refusal.
  absl::StatusOr<v1::StatsResponse> all = root->Stats();
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_FALSE(all->only_callers_uid());
  EXPECT_EQ(all->denials_by_rule().at("all"), 1u);
  std::set<uint32_t> uids;
  for (const v1::ClientStats& c : all->clients()) uids.insert(c.uid());
  EXPECT_TRUE(uids.count(0)) << all->DebugString();
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
  // Measured once hallocd has met EMFILE (its first line says so, whichever
  // call met it: accept4, the pidfd, the peer's namespace), not after a
  // guess at how long the flood takes to reach it.
  constexpr absl::string_view kPaused = "refusing connections for";
  for (int i = 0; i < 1000 && !absl::StrContains(Log(), kPaused); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(absl::StrContains(Log(), kPaused)) << "the flood never reached EMFILE; log:\n"
                                                 << Log();
  const long before = CpuTicks(pid_);
  absl::SleepFor(absl::Seconds(1));
  const long used = CpuTicks(pid_) - before;
  EXPECT_LT(used, sysconf(_SC_CLK_TCK) / 5) << "hallocd spins at EMFILE";
  const std::string log = Log();
  int accept_lines = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    // accept4 at EMFILE, or the accepted connection's pidfd or namespace.
    accept_lines += absl::StrContains(line, kPaused);
  }
  EXPECT_GT(accept_lines, 0) << "the flood never reached EMFILE; log:\n" << log;
  EXPECT_LE(accept_lines, 20) << "outsider-triggered lines are not rate-limited";
  flood.clear();
  // Once the flood lets go, clients get in again.
  absl::Status s = absl::UnavailableError("not tried");
  for (int i = 0; i < 2000 && !s.ok(); ++i) {
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
  const std::string evil = (dir_ / "evil\n") + forged;
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
  for (int i = 0; i < 2000 && Stats().live_buffers() != 0; ++i) {
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
