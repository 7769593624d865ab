// End to end: libhalloc ↔ gRPC + broker ↔ an in-process hallocd.
#include "clients/cpp/halloc/client.h"

#include <drm_fourcc.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/open_fds.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

using ::absl::StatusCode;
using testing::CountOpenFds;
using testing::HallocTest;
using Via = testing::TestDaemon::Via;

// Runs `body` in a forked child (optionally as `uid`); returns its exit code.
template <typename F>
int InChild(F body, uid_t uid = 0) {
  pid_t pid = fork();
  if (pid == 0) {
    if (uid != 0 && (setgid(uid) != 0 || setuid(uid) != 0)) _exit(100);
    _exit(body());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Waits (bounded) until the daemon reports `n` live buffers.
bool WaitForLiveBuffers(Client& c, uint64_t n) {
  for (int i = 0; i < 2000; ++i) {
    absl::StatusOr<v1::StatsResponse> s = c.Stats();
    if (s.ok() && s->live_buffers() == n) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

class ClientTest : public HallocTest {};

TEST_F(ClientTest, AllocateMapWriteDescribeListRelease) {
  for (uint64_t size : {uint64_t{1}, uint64_t{4096}, uint64_t{100000},
                        uint64_t{8} << 20}) {
    SCOPED_TRACE(size);
    absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(size, 0, "blob"));
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_GE(b->size(), size);
    EXPECT_EQ(b->size() % 4096, 0u);
    EXPECT_FALSE(b->is_dmabuf());
    EXPECT_EQ(b->info().fd_kind(), v1::FD_KIND_MEMFD);
    struct stat st;
    ASSERT_EQ(fstat(b->fd(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), b->size());
    EXPECT_EQ(b->Map(Access::kNone).status().code(),
              absl::StatusCode::kInvalidArgument);
    // memfds carry no fences.
    EXPECT_EQ(b->ExportSyncFile(Access::kRead).status().code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(b->ImportSyncFile(UniqueFd(), Access::kReadWrite).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(b->ExportSyncFile(Access::kNone).status().code(),
              absl::StatusCode::kInvalidArgument);
    absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite);
    ASSERT_TRUE(m.ok()) << m.status();
    for (size_t i = 0; i < m->size(); i += 4096) {
      ASSERT_EQ(m->as<uint8_t>()[i], 0);  // zero-filled
      m->as<uint8_t>()[i] = 0xa5;
    }
    absl::StatusOr<v1::BufferInfo> info = client().Describe(b->id());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->name(), "blob");
    EXPECT_EQ(info->backend(), "memfd");
    EXPECT_TRUE(info->owned());
    EXPECT_EQ(info->owner_uid(), getuid());
    absl::StatusOr<std::vector<v1::BufferInfo>> list = client().List();
    ASSERT_TRUE(list.ok());
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ((*list)[0].id(), b->id());
    ASSERT_TRUE(client().Release(b->id()).ok());
    EXPECT_EQ(client().Describe(b->id()).status().code(), StatusCode::kNotFound);
    EXPECT_TRUE(client().List()->empty());
  }
}

TEST_F(ClientTest, ImageBufferCarriesLayout) {
  absl::StatusOr<Buffer> b = client().Allocate(
      ImageDescriptor(1920, 1080, DRM_FORMAT_NV12, 0x33, "nv12"));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->layout().planes_size(), 2);
  EXPECT_EQ(b->layout().planes(0).stride(), 1920u);
  EXPECT_EQ(b->layout().planes(1).offset(), 1920u * 1080);
  EXPECT_EQ(b->layout().size(), 3110400u);
  EXPECT_GE(b->size(), 3110400u);
}

TEST_F(ClientTest, CountAllocatesAllAndFdsMatchTheirBuffers) {
  absl::StatusOr<std::vector<Buffer>> bs =
      client().Allocate(BlobDescriptor(3 * 4096), 5);
  ASSERT_TRUE(bs.ok()) << bs.status();
  ASSERT_EQ(bs->size(), 5u);
  std::set<ino_t> inodes;
  for (const Buffer& b : *bs) {
    struct stat st;
    ASSERT_EQ(fstat(b.fd(), &st), 0);
    inodes.insert(st.st_ino);
  }
  EXPECT_EQ(inodes.size(), 5u);
}

TEST_F(ClientTest, ConcurrentCallersGetTheirOwnFds) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const uint64_t size = (t + 1) * 4096 * (i % 3 + 1);
        absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(size));
        struct stat st;
        if (!b.ok() || fstat(b->fd(), &st) != 0 ||
            static_cast<uint64_t>(st.st_size) != size ||
            !client().Release(b->id()).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(WaitForLiveBuffers(client(), 0));
}

TEST_F(ClientTest, BadInputsGetTheirCodeAndLeakNothing) {
  ASSERT_TRUE(client().Stats().ok());  // warm up the channel's own fds
  const int fds_before = CountOpenFds();
  EXPECT_EQ(client().Allocate(BlobDescriptor(0)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Allocate(BlobDescriptor(uint64_t{1} << 50)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Allocate(BlobDescriptor(4096), 1000).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Allocate(BlobDescriptor(4096, uint64_t{1} << 40)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Allocate(ImageDescriptor(0, 10, DRM_FORMAT_NV12, 0)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Allocate(ImageDescriptor(1u << 31, 1u << 31, DRM_FORMAT_ARGB8888, 0))
                .status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client().Describe(424242).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client().Release(424242).code(), StatusCode::kNotFound);
  EXPECT_EQ(client().Import("not-a-token").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client().Revoke(5).code(), StatusCode::kNotFound);
  EXPECT_EQ(client().Share(424242, getuid()).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(CountOpenFds(), fds_before);
  EXPECT_EQ(client().Stats()->live_buffers(), 0u);
}

// Both request paths, as libhalloc makes them: the broker fast path and gRPC.
TEST_F(ClientTest, BothPathsAgreeOnResultsAndErrors) {
  absl::StatusOr<Client> g = daemon().Connect(Via::kGrpc);
  ASSERT_TRUE(g.ok()) << g.status();
  for (Client* c : {&client(), &*g}) {
    SCOPED_TRACE(c == &client() ? "broker" : "grpc");
    absl::StatusOr<std::vector<Buffer>> bs =
        c->Allocate(ImageDescriptor(64, 32, DRM_FORMAT_NV12, 0, "frame"), 3);
    ASSERT_TRUE(bs.ok()) << bs.status();
    ASSERT_EQ(bs->size(), 3u);
    for (const Buffer& b : *bs) {
      EXPECT_EQ(b.info().name(), "frame");
      EXPECT_EQ(b.layout().planes_size(), 2);
      EXPECT_GE(static_cast<uint64_t>(lseek(b.fd(), 0, SEEK_END)), b.size());
    }
    std::vector<uint64_t> ids;
    for (const Buffer& b : *bs) ids.push_back(b.id());
    // More ids than one request carries (64 KiB): a ReleaseMany stream of
    // several, released as one, all or nothing (an unknown id in its
    // final part: nothing released, not even the ids of its first parts).
    std::vector<uint64_t> many;
    for (int i = 0; i < 20000; ++i) many.insert(many.end(), ids.begin(), ids.end());
    for (uint64_t i = 0; i < 40000; ++i) many.push_back((uint64_t{1} << 40) + i);
    absl::Status too_many = c->Release(many);
    EXPECT_EQ(too_many.code(), StatusCode::kNotFound) << too_many;
    EXPECT_EQ(client().Stats()->live_buffers(), ids.size());
    // Held ids named over and over (as many as 64 KiB does not hold): released.
    many.resize(many.size() - 40000);
    EXPECT_TRUE(c->Release(many).ok());
    EXPECT_EQ(client().Stats()->live_buffers(), 0u);
    bs = c->Allocate(ImageDescriptor(64, 32, DRM_FORMAT_NV12, 0, "frame"), 3);
    ASSERT_TRUE(bs.ok()) << bs.status();
    ids.clear();
    for (const Buffer& b : *bs) ids.push_back(b.id());
    EXPECT_TRUE(c->Release(ids).ok());
    EXPECT_EQ(c->Release(ids).code(), StatusCode::kNotFound);
    EXPECT_EQ(c->Allocate(BlobDescriptor(0)).status().code(), StatusCode::kInvalidArgument);
    // A name that is not UTF-8 reaches hallocd and is refused with a reason
    // (it used to fail to parse: INTERNAL with no message).
    absl::Status bad = c->Allocate(BlobDescriptor(4096, 0, "cam\xff\xfe")).status();
    EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(bad.message(), "\\xff")) << bad;
    // A request over what hallocd reads of one (64 KiB on both paths).
    absl::Status huge = c->Allocate(BlobDescriptor(4096, 0, std::string(70000, 'n'))).status();
    EXPECT_EQ(huge.code(), StatusCode::kResourceExhausted) << huge;
  }
  EXPECT_EQ(client().Stats()->live_buffers(), 0u);
}

TEST_F(ClientTest, CallsWithoutAValidSessionAreUnauthenticated) {
  auto channel = grpc::CreateChannel(
      "unix:" + daemon().daemon().options().control_socket,
      grpc::InsecureChannelCredentials());
  auto stub = v1::Allocator::NewStub(channel);
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  for (const char* token : {"", "00000000000000000000000000000000", "garbage"}) {
    SCOPED_TRACE(token);
    grpc::ClientContext ctx;
    if (token[0] != '\0') ctx.AddMetadata("halloc-session", token);
    v1::AllocateResponse resp;
    EXPECT_EQ(stub->Allocate(&ctx, req, &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext list_ctx;
  v1::ListResponse list;
  EXPECT_EQ(stub->List(&list_ctx, {}, &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Read-only, daemon-wide calls need no session (usable from grpc tools).
  grpc::ClientContext stats_ctx;
  v1::StatsResponse stats;
  EXPECT_TRUE(stub->Stats(&stats_ctx, {}, &stats).ok());
  EXPECT_EQ(stats.live_buffers(), 0u);
}

TEST_F(ClientTest, ShareAndImportSeeTheSamePagesWithNarrowedRights) {
  // An owner of its own: its session ends below.
  absl::StatusOr<Client> owner = daemon().Connect();
  ASSERT_TRUE(owner.ok()) << owner.status();
  absl::StatusOr<Buffer> b = owner->Allocate(BlobDescriptor(1 << 20, 0, "shared"));
  ASSERT_TRUE(b.ok());
  {
    absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite);
    ASSERT_TRUE(m.ok());
    for (size_t i = 0; i < m->size(); ++i) m->as<uint8_t>()[i] = i * 7;
  }
  absl::StatusOr<v1::Grant> grant = owner->Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
  ASSERT_TRUE(grant.ok()) << grant.status();

  absl::StatusOr<Client> peer = daemon().Connect();
  ASSERT_TRUE(peer.ok());
  absl::StatusOr<Buffer> got = peer->Import(grant->token());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id(), b->id());
  EXPECT_EQ(got->info().cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_FALSE(got->info().owned());
  struct stat s1, s2;
  ASSERT_EQ(fstat(b->fd(), &s1), 0);
  ASSERT_EQ(fstat(got->fd(), &s2), 0);
  EXPECT_EQ(s1.st_ino, s2.st_ino);  // same memory, no copy
  absl::StatusOr<Mapping> r = got->Map(Access::kRead);
  ASSERT_TRUE(r.ok());
  for (size_t i = 0; i < r->size(); ++i) {
    ASSERT_EQ(r->as<uint8_t>()[i], static_cast<uint8_t>(i * 7)) << i;
  }
  EXPECT_EQ(got->Map(Access::kReadWrite).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_NE(mprotect(r->data(), r->size(), PROT_READ | PROT_WRITE), 0);

  // The read-only rights travel with the fd to any process it is passed to.
  const int fd = got->fd();
  const size_t size = got->size();
  EXPECT_EQ(InChild([fd, size] {
              void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
              return p == MAP_FAILED && errno == EACCES ? 0 : 1;
            }),
            0);

  // The buffer outlives its owner's session while the peer holds it.
  const uint64_t id = b->id();
  absl::StatusOr<v1::BufferInfo> d = peer->Describe(id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->holders_size(), 2);
  b = absl::CancelledError("dropped");    // the owner's fd closes
  owner = absl::CancelledError("ended");  // and its session ends
  for (int i = 0; i < 500; ++i) {
    d = peer->Describe(id);
    if (!d.ok() || d->holders_size() != 2) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(d.ok()) << "the import went with its owner's session: " << d.status();
  EXPECT_EQ(d->holders_size(), 1);
  for (size_t i = 0; i < r->size(); ++i) {
    ASSERT_EQ(r->as<uint8_t>()[i], static_cast<uint8_t>(i * 7)) << i;
  }
  EXPECT_TRUE(got->Map(Access::kRead).ok());
}

// Whether a child process can become `uid` (root outside a sandbox).
// Whether this process may become `uid`, one other than its own (as
// itself it always may, and the cross-uid cases would test nothing).
bool CanSwitchUid(uid_t uid) {
  return ::geteuid() != uid &&
         InChild([uid] { return setgid(uid) == 0 && setuid(uid) == 0 ? 0 : 1; }) == 0;
}

// Runs the peer binary with `args`; returns its exit code (128+sig if killed).
int RunPeer(const ConnectOptions& opts, std::vector<std::string> args) {
  const std::string peer =
      std::string(getenv("TEST_SRCDIR")) + "/halloc/tests/integration/peer";
  args.insert(args.begin(), {peer, opts.control_socket, opts.broker_socket});
  absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = std::move(args)});
  if (!p.ok()) return 127;
  const int status = *p->Wait();
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A session token is a bearer secret, but not one that makes another uid
// the session: on a gRPC connection of another uid it is refused; another
// connection of the session's own uid may use it.
TEST_F(ClientTest, ASessionTokenIsGoodOnlyFromItsOwnUid) {
  if (!CanSwitchUid(65534)) {
    GTEST_SKIP() << "cannot switch to uid 65534 here (not root, or a user "
                    "namespace without that uid): tokens across uids untested";
  }
  const ConnectOptions o = daemon().connect_options();
  absl::StatusOr<BrokerConnection> session = ConnectBroker(o.broker_socket, absl::Seconds(10));
  ASSERT_TRUE(session.ok()) << session.status();
  const std::string token = session->welcome.session_token();
  EXPECT_EQ(RunPeer(o, {"stolen-token", "65534", token}),
            static_cast<int>(StatusCode::kPermissionDenied));
  EXPECT_EQ(RunPeer(o, {"stolen-token", std::to_string(getuid()), token}), 0);
  EXPECT_EQ(RunPeer(o, {"stolen-token", "65534", "not-a-token"}),
            static_cast<int>(StatusCode::kUnauthenticated));
}

TEST_F(ClientTest, Nv12DescribesIdenticallyInAnotherProcess) {
  absl::StatusOr<Buffer> b = client().Allocate(
      ImageDescriptor(1920, 1080, DRM_FORMAT_NV12, 0x20000 | 0x800, "camera"));
  ASSERT_TRUE(b.ok()) << b.status();
  v1::BufferMetadata ds;
  ds.set_dataspace(281411584);  // BT2020 | ST2084 | FULL
  ASSERT_TRUE(client().SetMetadata(b->id(), v1::METADATA_DATASPACE, ds).ok());
  absl::StatusOr<v1::Grant> grant = client().Share(b->id(), getuid());
  ASSERT_TRUE(grant.ok());
  const ConnectOptions o = daemon().connect_options();
  const std::string cmd =
      std::string(getenv("TEST_SRCDIR")) + "/halloc/tests/integration/peer " +
      o.control_socket + " " + o.broker_socket + " import-describe " + grant->token();
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0);
  v1::BufferInfo theirs;
  ASSERT_TRUE(theirs.ParseFromString(out));
  absl::StatusOr<v1::BufferInfo> mine = client().Describe(b->id());
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(theirs.layout().SerializeAsString(), mine->layout().SerializeAsString())
      << theirs.layout().ShortDebugString() << "\nvs\n" << mine->layout().ShortDebugString();
  EXPECT_EQ(theirs.metadata().SerializeAsString(), mine->metadata().SerializeAsString());
  EXPECT_EQ(theirs.id(), mine->id());
  EXPECT_EQ(theirs.size(), mine->size());
  EXPECT_EQ(theirs.usage(), mine->usage());
  EXPECT_EQ(theirs.name(), "camera");
  EXPECT_EQ(theirs.layout().planes(1).offset(), 2073600u);
  EXPECT_FALSE(theirs.owned());
}

TEST_F(ClientTest, SessionEndReleasesHoldingsEvenOnCrash) {
  EXPECT_EQ(RunPeer(daemon().connect_options(), {"crash"}), 128 + SIGABRT);
  EXPECT_TRUE(WaitForLiveBuffers(client(), 0));
  EXPECT_EQ(client().Stats()->sessions(), 1u);
}

TEST_F(ClientTest, IdentityIsTheKernelsNotTheClients) {
  if (!CanSwitchUid(65534)) {
    GTEST_SKIP() << "cannot switch to uid 65534 here (not root, or a user "
                    "namespace without that uid): identity across uids untested";
  }
  if (::geteuid() != 0) GTEST_SKIP() << "shares with root as root: run as root";
  EXPECT_EQ(client().uid(), 0u);
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(4096));
  ASSERT_TRUE(b.ok());
  absl::StatusOr<v1::Grant> for_root = client().Share(b->id(), 0);
  ASSERT_TRUE(for_root.ok());
  // Sharing across uids is refused by the default rule.
  EXPECT_EQ(client().Share(b->id(), 65534).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(RunPeer(daemon().connect_options(),
                    {"identity", "65534", for_root->token(),
                     std::to_string(b->id())}),
            0);
  EXPECT_TRUE(client().Describe(b->id()).ok());  // untouched
  // The peer's own buffer died with its session; ours is intact.
  EXPECT_TRUE(WaitForLiveBuffers(client(), 1));
  absl::StatusOr<std::vector<v1::BufferInfo>> all = client().List(true);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].id(), b->id());
  ASSERT_EQ((*all)[0].holders_size(), 1);
  EXPECT_EQ((*all)[0].holders(0).pid(), getpid());
}

}  // namespace
}  // namespace halloc
