// The allocator under hallocd's own limit on buffers (Limits::max_buffers,
// Registry::SetMaxBuffers): room reserved by a call that then fails comes
// back; the limit binds every session. Under a quota, a call being made
// counts against the next one's.
#include <drm_fourcc.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"
#include "service/fd_channel.h"
#include "service/policy/policy.h"

namespace halloc {
namespace {

// A memfd backend whose next `fail` allocations fail (ENOMEM).
class FailingBackend : public MemfdBackend {
 public:
  explicit FailingBackend(std::atomic<int>* fail) : fail_(fail) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (fail_->load() > 0) {
      fail_->fetch_sub(1);
      return absl::ResourceExhaustedError("out of memory (test)");
    }
    return MemfdBackend::Allocate(r);
  }

 private:
  std::atomic<int>* const fail_;
};

v1::AllocateRequest Blob(uint64_t size, uint32_t count = 1) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(size);
  req.set_count(count);
  return req;
}

TEST(AllocatorLimitsTest, RoomReservedByACallThatFailsComesBack) {
  std::atomic<int> fail{0};
  Limits limits;
  limits.max_buffers = 2;
  Allocator core(std::make_unique<FailingBackend>(&fail), limits);
  EXPECT_EQ(core.Stats().max_buffers(), 2u);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd client_end(sv[0]);
  const uid_t uid = ::getuid();
  absl::StatusOr<std::shared_ptr<Session>> session = core.OpenSession(
      {uid, ::getgid(), ::getpid(), "", std::nullopt},
      std::make_shared<SocketFdChannel>(UniqueFd(sv[1])));
  ASSERT_TRUE(session.ok()) << session.status();
  fail = 5;
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(core.Allocate(**session, Blob(4096, 2)).ok());
  }
  // Had any failed call kept its reservation, there would be no room.
  absl::StatusOr<v1::AllocateResponse> two = core.Allocate(**session, Blob(4096, 2));
  EXPECT_TRUE(two.ok()) << two.status();
  absl::StatusOr<v1::AllocateResponse> third = core.Allocate(**session, Blob(4096));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_TRUE(absl::StrContains(third.status().message(), "--max_buffers")) << third.status();
}

// A memfd backend whose first allocation waits until `go` (so that its
// call is in flight), counting the allocations it was asked for.
class HeldBackend : public MemfdBackend {
 public:
  HeldBackend(absl::Notification* entered, absl::Notification* go, std::atomic<int>* calls)
      : entered_(entered), go_(go), calls_(calls) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (calls_->fetch_add(1) == 0) {
      entered_->Notify();
      go_->WaitForNotification();
    }
    return MemfdBackend::Allocate(r);
  }

 private:
  absl::Notification* const entered_;
  absl::Notification* const go_;
  std::atomic<int>* const calls_;
};

// Two calls of one uid at once under a quota of one buffer's bytes: the
// second is refused before any memory is made for it (each used to judge
// only what was added, so each made its memory, and only the later Add
// refused: N calls at once committed N quotas).
TEST(AllocatorLimitsTest, ACallInFlightCountsAgainstTheQuotaOfTheNext) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "q" match { any: true } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE quota_bytes: 1048576 }
  )", "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  absl::Notification entered, go;
  std::atomic<int> calls{0};
  Allocator core(std::make_unique<HeldBackend>(&entered, &go, &calls), Limits(), *policy);
  std::vector<UniqueFd> client_ends;
  std::vector<std::shared_ptr<Session>> sessions;
  for (int i = 0; i < 2; ++i) {  // two sessions of one uid
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    client_ends.emplace_back(sv[0]);
    absl::StatusOr<std::shared_ptr<Session>> s = core.OpenSession(
        {::getuid(), ::getgid(), ::getpid(), "", std::nullopt},
        std::make_shared<SocketFdChannel>(UniqueFd(sv[1])));
    ASSERT_TRUE(s.ok()) << s.status();
    sessions.push_back(*s);
  }
  absl::StatusOr<v1::AllocateResponse> first;
  std::thread in_flight([&] { first = core.Allocate(*sessions[0], Blob(1 << 20)); });
  entered.WaitForNotification();
  absl::StatusOr<v1::AllocateResponse> second = core.Allocate(*sessions[1], Blob(4096));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "quota_bytes")) << second.status();
  EXPECT_EQ(calls.load(), 1) << "memory was made for the refused call";
  go.Notify();
  in_flight.join();
  EXPECT_TRUE(first.ok()) << first.status();
}

// An image may be as large as --max_buffer_bytes lets any buffer be, above
// the layout's own default of 4 GiB too (the plan alone: nothing is
// allocated); above the limit it is refused.
TEST(AllocatorLimitsTest, ImagesAreBoundByTheBufferLimitAsBlobsAre) {
  Limits limits;
  limits.max_buffer_bytes = uint64_t{8} << 30;
  Allocator core(std::make_unique<MemfdBackend>(), limits);
  v1::IsSupportedRequest q;
  v1::ImageDescriptor* image = q.mutable_desc()->mutable_image();
  image->set_width(16384);
  image->set_height(16384);
  image->set_format(DRM_FORMAT_ABGR8888);
  image->set_layer_count(5);  // 5 GiB
  v1::IsSupportedResponse r = core.IsSupported(q, nullptr);
  EXPECT_TRUE(r.supported()) << r.reason();
  EXPECT_EQ(r.layout().size(), uint64_t{5} << 30);
  image->set_layer_count(9);  // 9 GiB
  r = core.IsSupported(q, nullptr);
  EXPECT_FALSE(r.supported());
  EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kInvalidArgument)) << r.reason();
}

// A rule's max_buffer_bytes bounds the size asked for, as hallocd's own
// limit does, not that size rounded up to pages: a camera's 1,000,000-byte
// buffer under "max_buffer_bytes: 1000000" is allowed.
TEST(AllocatorLimitsTest, ARulesBufferLimitBoundsTheSizeAskedFor) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "cam" match { any: true } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE max_buffer_bytes: 1000000 }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(std::make_unique<MemfdBackend>(), Limits(), *policy);
  const Identity caller{::getuid(), ::getgid(), ::getpid(), "", std::nullopt};
  v1::IsSupportedRequest q;
  q.mutable_desc()->set_size(1000000);
  v1::IsSupportedResponse r = core.IsSupported(q, &caller);
  EXPECT_TRUE(r.supported()) << r.reason();
  q.mutable_desc()->set_size(1000001);
  r = core.IsSupported(q, &caller);
  EXPECT_FALSE(r.supported());
  EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kPermissionDenied)) << r.reason();
  EXPECT_TRUE(absl::StrContains(r.reason(), "1000001 bytes exceeds max_buffer_bytes 1000000"))
      << r.reason();
}

// A call that no release could ever make room for says so, and
// IsSupported says the same: more buffers than a session may hold
// (INVALID_ARGUMENT), more than the rule's whole quota (its refusal). Both
// said yes, and Allocate RESOURCE_EXHAUSTED ("may succeed later").
TEST(AllocatorLimitsTest, ACallNoReleaseCouldMakeRoomForIsRefusedAndIsSupportedSaysSo) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "q" match { any: true } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE quota_bytes: 12288 }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Limits limits;
  limits.max_buffers_per_session = 4;
  Allocator core(std::make_unique<MemfdBackend>(), limits, *policy);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd client_end(sv[0]);
  const Identity me{::getuid(), ::getgid(), ::getpid(), "", std::nullopt};
  absl::StatusOr<std::shared_ptr<Session>> session =
      core.OpenSession(me, std::make_shared<SocketFdChannel>(UniqueFd(sv[1])));
  ASSERT_TRUE(session.ok()) << session.status();
  const struct {
    uint64_t size;
    uint32_t count;
    absl::StatusCode code;
    const char* says;
  } cases[] = {
      {1, 5, absl::StatusCode::kInvalidArgument, "exceeds the 4 buffers a session may hold"},
      {4096, 4, absl::StatusCode::kPermissionDenied, "4 buffers of 4096 bytes exceed quota_bytes"},
      {12289, 1, absl::StatusCode::kPermissionDenied, "1 buffers of 16384 bytes"},
  };
  for (const auto& c : cases) {
    v1::IsSupportedRequest q;
    q.mutable_desc()->set_size(c.size);
    q.set_count(c.count);
    v1::IsSupportedResponse r = core.IsSupported(q, &me);
    EXPECT_FALSE(r.supported()) << c.says;
    EXPECT_EQ(r.code(), static_cast<int>(c.code)) << r.reason();
    EXPECT_TRUE(absl::StrContains(r.reason(), c.says)) << r.reason();
    absl::StatusOr<v1::AllocateResponse> a = core.Allocate(**session, Blob(c.size, c.count));
    EXPECT_EQ(a.status().code(), c.code) << a.status();
    EXPECT_EQ(a.status().message(), r.reason());
  }
  // What fits beside nothing held is still asked of the quota as it is.
  absl::StatusOr<v1::AllocateResponse> fits = core.Allocate(**session, Blob(4096, 3));
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(core.Allocate(**session, Blob(4096)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// A caller no rule matches is refused by the policy before anything else
// is judged: it learns nothing of what the backend cannot do nor of
// hallocd's limits, and the refusal is the policy's (audited, counted by
// rule). A caller a rule matches still hears what is wrong with its ask.
TEST(AllocatorLimitsTest, ACallerNoRuleMatchesIsRefusedByThePolicyFirst) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
      absl::StrCat("clients { name: \"me\" match { uids: ", ::getuid(),
                   " } usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ_WRITE }"),
      "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(std::make_unique<MemfdBackend>(), Limits(), *policy);
  const Identity me{::getuid(), ::getgid(), ::getpid(), "", std::nullopt};
  const uid_t other_uid = ::getuid() + 1;
  const Identity other{other_uid, other_uid, ::getpid(), "", std::nullopt};
  v1::IsSupportedRequest protected_content;
  protected_content.mutable_desc()->set_size(4096);
  protected_content.mutable_desc()->set_usage(usage::kProtected | usage::kGpuTexture);
  v1::IsSupportedRequest too_large;
  too_large.mutable_desc()->set_size(Limits().max_buffer_bytes + 1);
  for (const v1::IsSupportedRequest& q : {protected_content, too_large}) {
    v1::IsSupportedResponse r = core.IsSupported(q, &other);
    EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kPermissionDenied)) << r.reason();
    EXPECT_TRUE(absl::StrContains(r.reason(), "no rule of policy")) << r.reason();
  }
  EXPECT_EQ(core.IsSupported(protected_content, &me).code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(core.IsSupported(too_large, &me).code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace halloc
