// Unit tests of the allocator core (fixture: allocator_testing.h): Allocate,
// IsSupported, metadata, Release, delivery and sessions. Share and Import:
// allocator_sharing_test.cc.
#include "service/allocator.h"

#include <drm_fourcc.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/allocator_testing.h"
#include "service/backend/memfd_backend.h"
#include "service/layout/format.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

TEST_F(AllocatorTest, AllocateDeliversFdBeforeReturning) {
  Peer p = Open();
  absl::StatusOr<v1::AllocateResponse> r = core_.Allocate(*p.session, Blob(5000, 3));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->buffers_size(), 3);
  for (const v1::BufferInfo& info : r->buffers()) {
    EXPECT_EQ(info.size(), 8192u);  // page-rounded
    EXPECT_TRUE(info.owned());
    EXPECT_EQ(info.owner_uid(), 1000u);
    EXPECT_EQ(info.cpu_access(), v1::CPU_ACCESS_READ_WRITE);
  }
  // All three fds in one record, in the reply's order.
  absl::StatusOr<Record> rec = ReceiveRecord(p.client_end.get(), true);
  ASSERT_TRUE(rec.ok()) << rec.status();
  v1::BrokerFrame frame;
  ASSERT_TRUE(frame.ParseFromString(rec->bytes));
  ASSERT_EQ(frame.buffers().buffers_size(), 3);
  ASSERT_EQ(rec->fds.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(frame.buffers().buffers(i).buffer_id(), r->buffers(i).id());
    struct stat st;
    ASSERT_EQ(fstat(rec->fds[i].get(), &st), 0);
    EXPECT_EQ(st.st_size, 8192);
  }
  EXPECT_EQ(core_.Stats().live_buffers(), 3u);
  EXPECT_EQ(core_.Stats().live_bytes(), 3u * 8192);
}

TEST_F(AllocatorTest, BadDescriptorsAreInvalidArgumentAndAllocateNothing) {
  Peer p = Open();
  struct Case {
    const char* what;
    v1::AllocateRequest req;
  };
  std::vector<Case> cases;
  cases.push_back({"size 0", Blob(0)});
  cases.push_back({"too big", Blob(uint64_t{1} << 40)});
  cases.push_back({"max u64", Blob(~uint64_t{0})});
  cases.push_back({"count 65", Blob(4096, 65)});
  v1::AllocateRequest empty;
  cases.push_back({"no kind", empty});
  v1::AllocateRequest badname = Blob(4096);
  badname.mutable_desc()->set_name("../etc/passwd");
  cases.push_back({"bad name", badname});
  v1::AllocateRequest longname = Blob(4096);
  longname.mutable_desc()->set_name(std::string(64, 'a'));
  cases.push_back({"long name", longname});
  v1::AllocateRequest reserved = Blob(4096);
  reserved.mutable_desc()->set_usage(uint64_t{1} << 40);  // reserved bit
  cases.push_back({"reserved usage", reserved});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(core_.Allocate(*p.session, c.req).status().code(),
              StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
  EXPECT_EQ(ReceiveRecord(p.client_end.get(), true).status().code(),
            StatusCode::kResourceExhausted);  // nothing was sent
}

TEST_F(AllocatorTest, IsSupportedAgreesWithAllocate) {
  Peer p = Open();
  std::vector<v1::BufferDescriptor> descs;
  for (uint64_t size : {uint64_t{0}, uint64_t{1}, uint64_t{4096},
                        uint64_t{1} << 33, ~uint64_t{0}}) {
    v1::BufferDescriptor d;
    d.set_size(size);
    descs.push_back(d);
  }
  for (uint32_t fourcc : {DRM_FORMAT_NV12, DRM_FORMAT_ARGB8888, 0x12345678u}) {
    for (uint32_t w : {0u, 1u, 641u, 1920u, 100000u}) {
      v1::BufferDescriptor d;
      d.mutable_image()->set_width(w);
      d.mutable_image()->set_height(w / 2 + 1);
      d.mutable_image()->set_format(fourcc);
      descs.push_back(d);
    }
  }
  for (const v1::BufferDescriptor& d : descs) {
    SCOPED_TRACE(d.ShortDebugString());
    v1::IsSupportedRequest q;
    *q.mutable_desc() = d;
    const v1::IsSupportedResponse s = core_.IsSupported(q, nullptr);
    v1::AllocateRequest a;
    *a.mutable_desc() = d;
    absl::StatusOr<v1::AllocateResponse> r = core_.Allocate(*p.session, a);
    EXPECT_EQ(s.supported(), r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(s.layout().SerializeAsString(),
                r->buffers(0).layout().SerializeAsString());
      ReadFd(p);
    } else {
      EXPECT_EQ(s.code(), static_cast<int>(r.status().code()));
      EXPECT_EQ(s.reason(), r.status().message());
    }
  }
}

// The same sweep over every format in the table, several usages (including
// refused ones) and sizes (including refused ones): IsSupported and Allocate
// must agree on the answer, the code, the reason and the layout.
TEST_F(AllocatorTest, IsSupportedAgreesWithAllocateOverFormatsUsagesSizes) {
  Peer p = Open();
  const uint64_t usages[] = {
      0,
      usage::kCpuReadOften | usage::kCpuWriteOften,
      usage::kCpuReadOften,
      usage::kGpuTexture | usage::kGpuRenderTarget,
      usage::kCameraOutput | usage::kComposerOverlay,
      usage::kVideoDecoder,
      usage::kProtected,     // memfd cannot: FAILED_PRECONDITION
      uint64_t{1} << 40,     // reserved: INVALID_ARGUMENT
  };
  const std::pair<uint32_t, uint32_t> sizes[] = {
      {0, 16}, {1, 1}, {33, 17}, {1920, 1080}, {16384, 16384}, {16385, 1}};
  std::vector<uint32_t> fourccs;
  for (const format::FormatInfo& f : format::All()) fourccs.push_back(f.fourcc);
  fourccs.push_back(0x20203859);  // 'Y8  ' unknown to halloc
  int accepted = 0, refused = 0;
  for (uint32_t fourcc : fourccs) {
    for (uint64_t u : usages) {
      for (auto [w, h] : sizes) {
        v1::BufferDescriptor d;
        d.set_usage(u);
        d.mutable_image()->set_width(w);
        d.mutable_image()->set_height(h);
        d.mutable_image()->set_format(fourcc);
        SCOPED_TRACE(d.ShortDebugString());
        v1::IsSupportedRequest q;
        *q.mutable_desc() = d;
        const v1::IsSupportedResponse s = core_.IsSupported(q, nullptr);
        v1::AllocateRequest a;
        *a.mutable_desc() = d;
        absl::StatusOr<v1::AllocateResponse> r = core_.Allocate(*p.session, a);
        ASSERT_EQ(s.supported(), r.ok()) << r.status();
        if (r.ok()) {
          ++accepted;
          EXPECT_EQ(s.layout().SerializeAsString(),
                    r->buffers(0).layout().SerializeAsString());
          EXPECT_GE(r->buffers(0).size(), r->buffers(0).layout().size());
          ReadFd(p);
          v1::ReleaseRequest rel;
          rel.add_buffer_ids(r->buffers(0).id());
          ASSERT_TRUE(core_.Release(*p.session, rel).ok());
        } else {
          ++refused;
          EXPECT_EQ(s.code(), static_cast<int>(r.status().code()));
          EXPECT_EQ(s.reason(), r.status().message());
        }
      }
    }
  }
  EXPECT_GT(accepted, 100);
  EXPECT_GT(refused, 100);
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

TEST_F(AllocatorTest, ProtectedUsageIsRefusedOnMemfd) {
  Peer p = Open();
  v1::AllocateRequest req = Blob(4096);
  req.mutable_desc()->set_usage(usage::kProtected);
  EXPECT_EQ(core_.Allocate(*p.session, req).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST_F(AllocatorTest, MetadataDefaultsAndOnlyMutableFieldsCanBeSet) {
  Peer owner = Open(), reader = Open();
  v1::AllocateRequest req;
  req.mutable_desc()->mutable_image()->set_width(1920);
  req.mutable_desc()->mutable_image()->set_height(1080);
  req.mutable_desc()->mutable_image()->set_format(DRM_FORMAT_NV12);
  auto r = core_.Allocate(*owner.session, req);
  ASSERT_TRUE(r.ok()) << r.status();
  const uint64_t id = r->buffers(0).id();
  const v1::BufferMetadata& m = r->buffers(0).metadata();
  ASSERT_EQ(m.crop_size(), 2);
  EXPECT_EQ(m.crop(0).right(), 1920);
  EXPECT_EQ(m.crop(1).bottom(), 540);
  EXPECT_EQ(m.blend_mode(), v1::BLEND_MODE_INVALID);
  EXPECT_FALSE(r->buffers(0).protected_content());

  v1::SetMetadataRequest set;
  set.set_buffer_id(id);
  set.set_type(v1::METADATA_DATASPACE);
  set.mutable_value()->set_dataspace(143261696);  // BT709 | SMPTE170M | LIMITED
  absl::StatusOr<v1::BufferInfo> info = core_.SetMetadata(*owner.session, set);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata().dataspace(), 143261696);

  set.set_type(v1::METADATA_BLEND_MODE);
  set.mutable_value()->set_blend_mode(v1::BLEND_MODE_PREMULTIPLIED);
  ASSERT_TRUE(core_.SetMetadata(*owner.session, set).ok());
  set.mutable_value()->set_blend_mode(static_cast<v1::BlendMode>(9));
  EXPECT_EQ(core_.SetMetadata(*owner.session, set).status().code(),
            StatusCode::kInvalidArgument);

  set.set_type(v1::METADATA_CROP);
  set.mutable_value()->clear_crop();
  v1::Rect* y = set.mutable_value()->add_crop();
  y->set_left(10); y->set_top(10); y->set_right(1910); y->set_bottom(1070);
  EXPECT_EQ(core_.SetMetadata(*owner.session, set).status().code(),
            StatusCode::kInvalidArgument);  // one rect for two planes
  v1::Rect* uv = set.mutable_value()->add_crop();
  uv->set_left(5); uv->set_top(5); uv->set_right(961); uv->set_bottom(535);
  EXPECT_EQ(core_.SetMetadata(*owner.session, set).status().code(),
            StatusCode::kInvalidArgument);  // 961 > 960 samples
  uv->set_right(955);
  info = core_.SetMetadata(*owner.session, set);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata().crop(1).right(), 955);

  for (v1::StandardMetadataType immutable :
       {v1::METADATA_BUFFER_ID, v1::METADATA_NAME, v1::METADATA_WIDTH,
        v1::METADATA_HEIGHT, v1::METADATA_PIXEL_FORMAT_FOURCC, v1::METADATA_USAGE,
        v1::METADATA_ALLOCATION_SIZE, v1::METADATA_PLANE_LAYOUTS,
        v1::METADATA_PROTECTED_CONTENT, v1::METADATA_STRIDE, v1::METADATA_INVALID}) {
    SCOPED_TRACE(immutable);
    set.set_type(immutable);
    EXPECT_EQ(core_.SetMetadata(*owner.session, set).status().code(),
              StatusCode::kInvalidArgument);
  }

  // A read-only holder reads the metadata but cannot change it.
  auto grant = Share(owner, id, 1000);
  ASSERT_TRUE(grant.ok());
  absl::StatusOr<v1::ImportResponse> got = core_.Import(*reader.session, grant->token());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->buffer().metadata().dataspace(), 143261696);
  EXPECT_EQ(got->buffer().metadata().blend_mode(), v1::BLEND_MODE_PREMULTIPLIED);
  set.set_type(v1::METADATA_DATASPACE);
  EXPECT_EQ(core_.SetMetadata(*reader.session, set).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.SetMetadata(*Open().session, set).status().code(),
            StatusCode::kNotFound);
}

// The owner sets its buffer's metadata whatever its CPU rights: a producer
// that only reads it by CPU (or a protected one, not at all) still tags its
// dataspace. It was refused as "shared with you read-only".
TEST_F(AllocatorTest, TheOwnerSetsMetadataWhateverItsCpuRights) {
  Peer owner = Open();
  v1::AllocateRequest req;
  req.mutable_desc()->mutable_image()->set_width(64);
  req.mutable_desc()->mutable_image()->set_height(64);
  req.mutable_desc()->mutable_image()->set_format(DRM_FORMAT_XRGB8888);
  req.mutable_desc()->set_usage(usage::kCpuReadOften | usage::kGpuRenderTarget);
  auto r = core_.Allocate(*owner.session, req);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_NE(r->buffers(0).cpu_access(), v1::CPU_ACCESS_READ_WRITE) << "the case needs it";
  v1::SetMetadataRequest set;
  set.set_buffer_id(r->buffers(0).id());
  set.set_type(v1::METADATA_DATASPACE);
  set.mutable_value()->set_dataspace(143261696);
  absl::StatusOr<v1::BufferInfo> info = core_.SetMetadata(*owner.session, set);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata().dataspace(), 143261696);
}

TEST_F(AllocatorTest, BlobHasNoCrop) {
  Peer p = Open();
  auto r = core_.Allocate(*p.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  v1::SetMetadataRequest set;
  set.set_buffer_id(r->buffers(0).id());
  set.set_type(v1::METADATA_CROP);
  set.mutable_value()->add_crop()->set_right(1);
  EXPECT_EQ(core_.SetMetadata(*p.session, set).status().code(),
            StatusCode::kInvalidArgument);
}

// A question (IsSupported) is no denial: only a refused call counts
// against the rule that refused it.
TEST(AllocatorPolicyTest, OnlyRefusedCallsCountAsDenials) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "nothing" match { uids: 1 } }
  )", "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(std::make_unique<MemfdBackend>(), Limits(), *policy);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd client_end(sv[1]);
  auto session = *core.OpenSession({1, 1, getpid(), "", std::nullopt},
                                   std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  auto denials = [&] {
    const v1::StatsResponse stats = core.Stats();
    auto it = stats.denials_by_rule().find("nothing");
    return it == stats.denials_by_rule().end() ? uint64_t{0} : it->second;
  };
  v1::IsSupportedRequest q;
  q.mutable_desc()->set_size(4096);
  for (int i = 0; i < 3; ++i) {
    const v1::IsSupportedResponse r = core.IsSupported(q, &session->creds());
    EXPECT_FALSE(r.supported());
    EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kPermissionDenied)) << r.reason();
  }
  EXPECT_EQ(denials(), 0u);
  v1::AllocateRequest req;
  *req.mutable_desc() = q.desc();
  EXPECT_EQ(core.Allocate(*session, req).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denials(), 1u);
  EXPECT_FALSE(core.Stats().only_callers_uid());
  // Denials are counted per rule, whoever was refused: a user who is no
  // operator does not see them.
  const v1::StatsResponse as_user = core.Stats(/*only_uid=*/1);
  EXPECT_TRUE(as_user.only_callers_uid());
  EXPECT_TRUE(as_user.denials_by_rule().empty());
}

// The policy's path (--policy: any bytes) reaches Stats as valid UTF-8, or
// every reader failed to parse the reply (`hallocctl stats`, /metrics).
TEST(AllocatorPolicyTest, APolicyPathThatIsNoUtf8LeavesStatsReadable) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy =
      Policy::Parse("clients { name: \"all\" match { any: true } }", "/etc/p\xff\"q.textproto");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(std::make_unique<MemfdBackend>(), Limits(), *policy);
  const v1::StatsResponse stats = core.Stats();
  v1::StatsResponse read;
  ASSERT_TRUE(read.ParseFromString(stats.SerializeAsString()));
  EXPECT_EQ(read.policy_source(), "/etc/p\\xff\\\"q.textproto");
}

// A memfd backend that sees udmabuf about (its module path: any file), or
// none.
std::unique_ptr<MemfdBackend> MemfdBesideUdmabuf(bool udmabuf) {
  return std::make_unique<MemfdBackend>(udmabuf ? "/proc/self/exe" : "/nonexistent");
}

TEST(AllocatorPolicyTest, AttachLimitsTheBackendCannotEnforceAreRefused) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "limited" match { uids: 1 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: "vgem" }
    clients { name: "any" match { uids: 2 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: "*" }
  )", "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  for (bool udmabuf : {false, true}) {
    SCOPED_TRACE(udmabuf);
    Allocator core(MemfdBesideUdmabuf(udmabuf), Limits(), *policy);
    v1::AllocateRequest req;
    req.mutable_desc()->set_size(4096);
    for (uid_t uid : {1u, 2u}) {
      Peer peer = OpenPeer(core, uid);
      const absl::StatusCode code = core.Allocate(*peer.session, req).status().code();
      EXPECT_EQ(code, udmabuf && uid == 1 ? absl::StatusCode::kFailedPrecondition
                                          : absl::StatusCode::kOk);
    }
  }
}

// A usage that asks only to read narrows the owner's fd where the backend
// can make it read-only; where it cannot (memfd with udmabuf about), the
// owner gets what its rule allows, and BufferInfo says so. Refused before,
// blaming the rule, for the commonest usages (camera_output|cpu_read_often).
// A rule that caps CPU access at read is no hint: refused there, naming it.
TEST(AllocatorPolicyTest, AReadOnlyUsageTheBackendCannotEnforceGetsWhatTheRuleAllows) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "rw" match { uids: 1 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: "*" }
    clients { name: "ro" match { uids: 2 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ attach_devices: "*" }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  for (bool udmabuf : {false, true}) {
    SCOPED_TRACE(udmabuf);
    Allocator core(MemfdBesideUdmabuf(udmabuf), Limits(), *policy);
    v1::AllocateRequest req;
    req.mutable_desc()->set_size(4096);
    req.mutable_desc()->set_usage(usage::kCameraOutput | usage::kCpuReadOften);
    for (uid_t uid : {1u, 2u}) {
      SCOPED_TRACE(uid);
      Peer peer = OpenPeer(core, uid);
      absl::StatusOr<v1::AllocateResponse> r = core.Allocate(*peer.session, req);
      if (udmabuf && uid == 2) {
        EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
        EXPECT_TRUE(absl::StrContains(r.status().message(), "(max_cpu_access of rule 'ro')"))
            << r.status();
        continue;
      }
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->buffers(0).cpu_access(),
                udmabuf ? v1::CPU_ACCESS_READ_WRITE : v1::CPU_ACCESS_READ);
    }
  }
}

TEST_F(AllocatorTest, ReleaseIsAllOrNothingAndFreesOnLastHolder) {
  Peer p = Open();
  auto r = core_.Allocate(*p.session, Blob(4096, 2));
  ASSERT_TRUE(r.ok());
  v1::ReleaseRequest bad;
  bad.add_buffer_ids(r->buffers(0).id());
  bad.add_buffer_ids(999999);
  EXPECT_EQ(core_.Release(*p.session, bad).code(), StatusCode::kNotFound);
  EXPECT_EQ(core_.Stats().live_buffers(), 2u);
  v1::ReleaseRequest good;
  good.add_buffer_ids(r->buffers(0).id());
  EXPECT_TRUE(core_.Release(*p.session, good).ok());
  EXPECT_EQ(core_.Stats().live_buffers(), 1u);
  EXPECT_EQ(core_.Release(*p.session, good).code(), StatusCode::kNotFound);
}

// What an Allocate made that its caller never learns of (undelivered, or
// a gRPC caller's deadline passed) goes back one by one: another process
// speaking for the session may have released one of the guessable ids
// already, and a single all-or-nothing Release then kept the rest held
// (and charged) until the session ended (helper-115).
TEST_F(AllocatorTest, UndoingAnAllocateGivesBackWhatIsStillHeld) {
  Peer p = Open();
  auto r = core_.Allocate(*p.session, Blob(4096, 3));
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ReleaseRequest one;
  one.add_buffer_ids(r->buffers(1).id());
  ASSERT_TRUE(core_.Release(*p.session, one).ok());
  core_.UndoAllocate(*p.session, *r);
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

TEST_F(AllocatorTest, UnauthenticatedTokens) {
  EXPECT_EQ(core_.Authenticate("").status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(core_.Authenticate("deadbeef").status().code(),
            StatusCode::kUnauthenticated);
  Peer p = Open();
  EXPECT_TRUE(core_.Authenticate(p.session->token()).ok());
  core_.CloseSession(p.session->id());
  EXPECT_EQ(core_.Authenticate(p.session->token()).status().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(core_.Allocate(*p.session, Blob(4096)).status().code(),
            StatusCode::kUnauthenticated);
}

TEST_F(AllocatorTest, FullBrokerQueueRollsBackAllocation) {
  Peer p = Open();
  // Never read the client end: eventually the socket queue fills.
  absl::Status last;
  int ok = 0;
  for (int i = 0; i < 100000; ++i) {
    absl::StatusOr<v1::AllocateResponse> r = core_.Allocate(*p.session, Blob(4096));
    if (!r.ok()) {
      last = r.status();
      break;
    }
    ++ok;
  }
  ASSERT_EQ(last.code(), StatusCode::kResourceExhausted) << last;
  EXPECT_EQ(core_.Stats().live_buffers(), static_cast<uint64_t>(ok));
}

TEST_F(AllocatorTest, SeveralBuffersReachTheClientAllOrNothing) {
  Peer p = Open();
  int held = 0;
  while (core_.Allocate(*p.session, Blob(4096)).ok()) ++held;  // queue full
  // Make room for one small record; then ask for 8 buffers at once.
  absl::StatusOr<Record> first = ReceiveRecord(p.client_end.get(), true);
  ASSERT_TRUE(first.ok());
  absl::StatusOr<v1::AllocateResponse> many = core_.Allocate(*p.session, Blob(4096, 8));
  const int expected_fds = held + (many.ok() ? 8 : 0);
  if (!many.ok()) {
    EXPECT_EQ(many.status().code(), StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(core_.Stats().live_buffers(), static_cast<uint64_t>(expected_fds));
  // What the client can read is exactly what it holds: no fd of a failed
  // call is left behind for it.
  int fds = static_cast<int>(first->fds.size());
  for (;;) {
    absl::StatusOr<Record> rec = ReceiveRecord(p.client_end.get(), true);
    if (!rec.ok()) break;
    fds += static_cast<int>(rec->fds.size());
  }
  EXPECT_EQ(fds, expected_fds);
}

TEST_F(AllocatorTest, ClosingSessionReleasesEverything) {
  Peer p = Open();
  ASSERT_TRUE(core_.Allocate(*p.session, Blob(1 << 20, 8)).ok());
  EXPECT_EQ(core_.Stats().live_buffers(), 8u);
  core_.CloseSession(p.session->id());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
  EXPECT_EQ(core_.Stats().live_bytes(), 0u);
  EXPECT_EQ(core_.Stats().sessions(), 0u);
}

}  // namespace
}  // namespace halloc
