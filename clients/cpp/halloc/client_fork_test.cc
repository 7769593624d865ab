// libhalloc across fork(): a Client belongs to the process that connected
// it (a child's calls on it are refused, destroying it there ends nothing),
// and a child's own Client shares nothing with its parent's.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace {

using testing::FakeBroker;
using testing::ReleaseReply;
using testing::TestChild;
using testing::WriteAll;

// Stats, for any caller.
class AnyStats final : public v1::Allocator::Service {
 public:
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse*) override {
    return grpc::Status::OK;
  }
};

// A control socket at args[0] serving AnyStats, in a process of its own (a
// fresh one: gRPC's server threads are nothing a forked client inherits);
// reports "ready", then the pid of each connection's peer.
int ControlServer(absl::Span<const std::string> args, int report) {
  AnyStats service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  absl::StatusOr<sockaddr_un> addr = UnixAddress(args[0]);
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (server == nullptr || !addr.ok() || !listener ||
      ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
      ::listen(listener.get(), 16) != 0) {
    return 1;
  }
  WriteAll(report, "ready\n");
  for (;;) {  // until the test kills it
    // Non-blocking, as gRPC's own listener makes them.
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) continue;
    ucred peer{};
    socklen_t len = sizeof(peer);
    ::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len);
    WriteAll(report, absl::StrCat(peer.pid, "\n"));
    grpc::AddInsecureChannelFromFd(server.get(), conn.release());
  }
}
HALLOC_TEST_CHILD("control-server", ControlServer);

// Built with ASan or TSan (GCC says so with __SANITIZE_*__, clang with
// __has_feature), whose allocators a bare fork of a threaded process may
// find locked for good.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizedAllocator = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitizedAllocator = true;
#else
constexpr bool kSanitizedAllocator = false;
#endif
#else
constexpr bool kSanitizedAllocator = false;
#endif

// In a child, a Client its parent connected refuses every call: the two
// would share its socket and take each other's replies. The child is a bare
// fork of this threaded process (gRPC's threads, the fake broker's): that
// is the case under test, and its calls allocate, which glibc's malloc
// allows after a fork but the sanitizers' allocators do not (a lock another
// thread held at the fork stays held in the child).
TEST(ClientForkTest, AChildCannotUseItsParentsClient) {
  if (kSanitizedAllocator) {
    GTEST_SKIP() << "a forked child of a threaded process may hang in the sanitizer's allocator";
  }
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const absl::Status release = c->Release(7);
    const absl::Status allocate = c->Allocate(BlobDescriptor(4096)).status();
    const absl::Status stats = c->Stats().status();  // the gRPC path
    ::_exit(absl::IsFailedPrecondition(release) && absl::IsFailedPrecondition(allocate) &&
                    absl::IsFailedPrecondition(stats)
                ? 0
                : 1);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a call in the child was not FAILED_PRECONDITION";
  EXPECT_TRUE(c->Release(8).ok()) << "the parent's Client works on";
  EXPECT_EQ(broker.releases().size(), 1u) << "the child sent a request";
}

// Destroying a Client ends its session even while a child forked since
// holds a copy of its socket (hallocd sees a connection end only when the
// last copy closes: grants stayed importable, buffers charged, for as long
// as the child lived); a child that destroys the Client it inherited ends
// nothing of its parent's. Bare forks of this threaded process, as above.
TEST(ClientForkTest, DestroyingAClientEndsItsSessionWhateverAChildHolds) {
  if (kSanitizedAllocator) {
    GTEST_SKIP() << "a forked child of a threaded process may hang in the sanitizer's allocator";
  }
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  std::optional<Client> c;
  {
    absl::StatusOr<Client> connected = Client::Connect(broker.options());
    ASSERT_TRUE(connected.ok()) << connected.status();
    c.emplace(*std::move(connected));
  }
  const auto wait_child = [](pid_t pid) {
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid)
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return 129;  // hung
  };
  // A child destroys what it inherited: the parent's session goes on.
  pid_t pid = ::fork();
  if (pid == 0) {
    c.reset();
    ::_exit(0);
  }
  ASSERT_GT(pid, 0);
  EXPECT_EQ(wait_child(pid), 0) << "the child could not destroy the Client it inherited";
  EXPECT_FALSE(broker.WaitForEnd(absl::Milliseconds(100))) << "the child ended the session";
  EXPECT_TRUE(c->Release(8).ok()) << "the parent's Client works on";
  // A child keeps its copy of the socket open; the parent destroys its
  // Client: the session ends now, not when the child exits.
  int hold[2];
  ASSERT_EQ(::pipe2(hold, O_CLOEXEC), 0);
  pid = ::fork();
  if (pid == 0) {
    char b;
    ::close(hold[1]);
    (void)::read(hold[0], &b, 1);  // until the parent closes its end
    ::_exit(0);
  }
  ASSERT_GT(pid, 0);
  ::close(hold[0]);
  c.reset();
  EXPECT_TRUE(broker.WaitForEnd(absl::Seconds(5)))
      << "the session outlived its Client while a child held the socket";
  ::close(hold[1]);
  EXPECT_EQ(wait_child(pid), 0);
}

// The Client a child connects (as the class comment says it should) has
// connections of its own: gRPC keeps a process-wide pool of them, which
// the child inherits, so its new channel took its parent's connection to
// the control socket, and the two wrote HTTP/2 frames over one socket
// (the parent's next call waited out its deadline; a child that had
// changed uid was judged by its parent's connection's).
TEST(ClientForkTest, AChildsOwnClientHasAControlConnectionOfItsOwn) {
  if (kSanitizedAllocator) {
    GTEST_SKIP() << "a forked child of a threaded process may hang in the sanitizer's allocator";
  }
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  FakeBroker childs([](int, const v1::BrokerRequest&) {});  // a fake serves one connection
  absl::StatusOr<TestChild> control = TestChild::Spawn("control-server", {broker.control_socket()});
  ASSERT_TRUE(control.ok()) << control.status();
  ASSERT_EQ(control->Line(), "ready");
  ConnectOptions child_options = childs.options(absl::Seconds(5));
  child_options.control_socket = broker.control_socket();
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(5)));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::StatsResponse> before = c->Stats();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(control->Line(), absl::StrCat(::getpid())) << "the parent's connection";
  const pid_t pid = ::fork();
  if (pid == 0) {
    absl::StatusOr<Client> own = Client::Connect(child_options);
    ::_exit(own.ok() && own->Stats().ok() && own->Stats().ok() ? 0 : 1);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's own Client failed";
  absl::StatusOr<v1::StatsResponse> after = c->Stats();
  EXPECT_TRUE(after.ok()) << after.status() << " (the parent's connection was the child's too?)";
  EXPECT_EQ(control->Line(absl::Seconds(1)), absl::StrCat(pid))
      << "the child called over its parent's connection";
}

}  // namespace
}  // namespace halloc
