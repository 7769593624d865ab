// The gRPC adaptor alone, over an in-process channel: sessions come only
// from the halloc-session metadata, core errors keep their codes, fds go to
// the session's channel (a fake here), never into the reply.
#include "service/grpc_service.h"

#include <grpc/support/time.h>
#include <grpcpp/create_channel_posix.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/grpc_methods.h"
#include "service/peer_identity.h"
#include "service/util/log_lines_testing.h"

namespace halloc {
namespace {

// Records what the core would have sent on the broker socket.
class FakeChannel : public FdChannel {
 public:
  absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                    const v1::AllocateResponse*) override {
    absl::SleepFor(delay);
    sent.push_back(info);
    fd_counts.push_back(fds.size());
    return absl::OkStatus();
  }
  std::vector<v1::BufferFds> sent;
  std::vector<size_t> fd_counts;
  absl::Duration delay;  // a slow delivery
};

// Holds every Share and Import call for `delay` before its handler runs:
// the server side of a call whose caller gives up meanwhile.
class SlowShares : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit SlowShares(absl::Duration delay) : delay_(delay) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const absl::string_view method = info->method();
    return new Hold(method == "/halloc.v1.Allocator/Share" ||
                            method == "/halloc.v1.Allocator/Import"
                        ? delay_
                        : absl::ZeroDuration());
  }

 private:
  class Hold : public grpc::experimental::Interceptor {
   public:
    explicit Hold(absl::Duration delay) : delay_(delay) {}
    void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
      if (m->QueryInterceptionHookPoint(
              grpc::experimental::InterceptionHookPoints::POST_RECV_MESSAGE)) {
        absl::SleepFor(delay_);
      }
      m->Proceed();
    }

   private:
    absl::Duration delay_;
  };
  absl::Duration delay_;
};

class GrpcServiceTest : public ::testing::Test {
 protected:
  explicit GrpcServiceTest(absl::Duration share_delay = absl::ZeroDuration(),
                           const StreamTimeLimits& times = {})
      : core_(std::make_unique<MemfdBackend>(), Limits()),
        service_(&core_, nullptr, nullptr, nullptr, times) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> slow;
    slow.push_back(std::make_unique<SlowShares>(share_delay));
    builder.experimental().SetInterceptorCreators(std::move(slow));
    server_ = builder.BuildAndStart();
    stub_ = v1::Allocator::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
    Identity me;
    me.uid = ::getuid();
    me.pid = ::getpid();
    session_ = *core_.OpenSession(me, channel_);
  }
  ~GrpcServiceTest() override { server_->Shutdown(); }

  // A context carrying `token` as the session metadata ("" for none).
  static std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata(kSessionMetadataKey, token);
    return ctx;
  }

  // Allocates `n` 4 KiB buffers in the session; their ids.
  std::vector<uint64_t> AllocateIds(uint32_t n) {
    v1::AllocateRequest req;
    req.mutable_desc()->set_size(4096);
    req.set_count(n);
    v1::AllocateResponse resp;
    grpc::Status s = stub_->Allocate(Ctx(session_->token()).get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::vector<uint64_t> ids;
    for (const v1::BufferInfo& b : resp.buffers()) ids.push_back(b.id());
    return ids;
  }

  // A grant of buffer `id` (this session's) to this uid, and a second
  // session of this uid on `channel`, whose gRPC Import of it gives up
  // after 50 ms (DEADLINE_EXCEEDED): the importer.
  std::shared_ptr<Session> ImportPastItsDeadline(uint64_t id, std::shared_ptr<FdChannel> channel) {
    v1::ShareRequest share;
    share.set_buffer_id(id);
    share.mutable_peer()->set_uid(::getuid());
    v1::ShareResponse grant;
    EXPECT_TRUE(stub_->Share(Ctx(session_->token()).get(), share, &grant).ok());
    Identity me;
    me.uid = ::getuid();
    me.pid = ::getpid();
    std::shared_ptr<Session> importer = *core_.OpenSession(me, std::move(channel));
    v1::ImportRequest import;
    import.set_grant_token(grant.grant().token());
    import.set_call_id(9);
    v1::ImportResponse got;
    auto ctx = Ctx(importer->token());
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
    EXPECT_EQ(stub_->Import(ctx.get(), import, &got).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
    return importer;
  }
  // How many buffers `session` holds.
  int HeldBy(Session& session) {
    absl::StatusOr<v1::ListResponse> l = core_.List(session, v1::ListRequest());
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? l->buffers_size() : -1;
  }

  // One ReleaseMany stream of `parts`, the final one marked `last` if
  // `ends`; its status.
  // `references`: which parts give back import references instead of
  // holds (none if empty); `generations`, the hold generations each names.
  grpc::Status ReleaseMany(const std::vector<std::vector<uint64_t>>& parts, bool ends = true,
                           const std::vector<bool>& references = {},
                           const std::vector<std::vector<uint64_t>>& generations = {}) {
    auto ctx = Ctx(session_->token());
    v1::ReleaseResponse resp;
    auto writer = stub_->ReleaseMany(ctx.get(), &resp);
    for (size_t i = 0; i < parts.size(); ++i) {
      v1::ReleaseRequest req;
      for (uint64_t id : parts[i]) req.add_buffer_ids(id);
      req.set_last(ends && i + 1 == parts.size());
      req.set_import_references(i < references.size() && references[i]);
      if (i < generations.size()) {
        for (uint64_t g : generations[i]) req.add_hold_generations(g);
      }
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  Allocator core_;
  AllocatorService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Allocator::Stub> stub_;
  std::shared_ptr<FakeChannel> channel_ = std::make_shared<FakeChannel>();
  std::shared_ptr<Session> session_;
};

TEST_F(GrpcServiceTest, AllocateFindsTheSessionByTokenAndSendsFdsToItsChannel) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  req.set_count(2);
  v1::AllocateResponse resp;
  grpc::Status s = stub_->Allocate(Ctx(session_->token()).get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.buffers_size(), 2);
  ASSERT_EQ(channel_->sent.size(), 1u);  // one record for both
  EXPECT_EQ(channel_->fd_counts[0], 2u);
  EXPECT_EQ(channel_->sent[0].buffers(0).buffer_id(), resp.buffers(0).id());

  v1::DescribeRequest dreq;
  dreq.set_buffer_id(resp.buffers(1).id());
  v1::DescribeResponse dresp;
  ASSERT_TRUE(stub_->Describe(Ctx(session_->token()).get(), dreq, &dresp).ok());
  EXPECT_EQ(dresp.buffer().size(), 4096u);
}

// The fd an import sends ahead of its reply carries the call's id (0 for an
// Allocate that gave none), so that a client with two imports of one buffer in flight
// tells them apart.
TEST_F(GrpcServiceTest, AnImportsFdCarriesItsCallId) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  ASSERT_TRUE(stub_->Allocate(Ctx(session_->token()).get(), req, &resp).ok());
  v1::ShareRequest share;
  share.set_buffer_id(resp.buffers(0).id());
  share.mutable_peer()->set_uid(::getuid());
  v1::ShareResponse grant;
  ASSERT_TRUE(stub_->Share(Ctx(session_->token()).get(), share, &grant).ok());
  EXPECT_EQ(channel_->sent[0].buffers(0).call_id(), 0u);  // Allocate's
  for (uint64_t call : {uint64_t{77}, uint64_t{78}}) {
    v1::ImportRequest import;
    import.set_grant_token(grant.grant().token());
    import.set_call_id(call);
    v1::ImportResponse got;
    ASSERT_TRUE(stub_->Import(Ctx(session_->token()).get(), import, &got).ok());
    EXPECT_EQ(channel_->sent.back().buffers(0).buffer_id(), resp.buffers(0).id());
    EXPECT_EQ(channel_->sent.back().buffers(0).call_id(), call);
    // And the hold it is on (the allocation's, both times), as the reply
    // says: for a client whose call gave up before the reply came.
    EXPECT_NE(got.hold_generation(), 0u);
    EXPECT_EQ(channel_->sent.back().buffers(0).hold_generation(), got.hold_generation());
  }
}

// A gRPC Allocate's fds carry its call id too, so that a client whose call
// gave up closes them as they come (Welcome.allocate_call_ids).
TEST_F(GrpcServiceTest, AnAllocatesFdsCarryItsCallId) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  req.set_count(2);
  req.set_call_id(91);
  v1::AllocateResponse resp;
  ASSERT_TRUE(stub_->Allocate(Ctx(session_->token()).get(), req, &resp).ok());
  ASSERT_EQ(channel_->sent.back().buffers_size(), 2);
  for (const v1::BufferFd& b : channel_->sent.back().buffers()) EXPECT_EQ(b.call_id(), 91u);
}

// The caller gave up (its deadline passed) while the buffers were being
// delivered: it will never learn their ids, so they are not kept for it.
TEST_F(GrpcServiceTest, BuffersOfACallPastItsDeadlineAreGivenBack) {
  channel_->delay = absl::Milliseconds(300);
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  auto ctx = Ctx(session_->token());
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
  EXPECT_EQ(stub_->Allocate(ctx.get(), req, &resp).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // The daemon side finishes after the caller gave up.
  absl::Time until = absl::Now() + absl::Seconds(5);
  while (core_.Stats().releases_total() == 0) {
    ASSERT_LT(absl::Now(), until) << "the late allocation was never given back";
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// A deadline centuries away (past where a system_clock time point wraps,
// the year 2262) has not passed: the call is served, its buffers kept.
TEST_F(GrpcServiceTest, ADeadlineCenturiesAwayHasNotPassed) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  auto ctx = Ctx(session_->token());
  ctx->set_deadline(gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                 gpr_time_from_seconds(int64_t{300} * 365 * 86400, GPR_TIMESPAN)));
  const grpc::Status s = stub_->Allocate(ctx.get(), req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 1u);
}

// The same for an Import whose caller gave up (deadline) while its fd was
// on its way: the fd went, so the import was delivered (a reference on the
// importer's hold), and the client, which closes that fd as it comes
// (AbandonCall), gives the reference back (ReleaseRequest.
// import_references); the hold goes with it. Before, hallocd guessed after
// the send whether the caller had given up, and the client could not know
// which way it guessed.
TEST_F(GrpcServiceTest, AnImportWhoseFdWentBeforeItsCallerGaveUpIsAReferenceTheClientGivesBack) {
  const std::vector<uint64_t> ids = AllocateIds(1);
  ASSERT_EQ(ids.size(), 1u);
  auto slow = std::make_shared<FakeChannel>();
  slow->delay = absl::Milliseconds(300);
  std::shared_ptr<Session> importer = ImportPastItsDeadline(ids[0], slow);
  // The daemon side finishes after the caller gave up (the send takes
  // 300 ms); the hold stays, the import's reference.
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(HeldBy(*importer), 1) << "an import whose fd went was undone";
  v1::ReleaseRequest give_back;
  give_back.add_buffer_ids(ids[0]);
  give_back.set_import_references(true);
  ASSERT_TRUE(core_.Release(*importer, give_back).ok());
  EXPECT_EQ(HeldBy(*importer), 0);
  // The sharer lets go: nothing is left holding it.
  v1::ReleaseRequest rel;
  rel.add_buffer_ids(ids[0]);
  ASSERT_TRUE(core_.Release(*session_, rel).ok());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

class SlowImportTest : public GrpcServiceTest {
 protected:
  SlowImportTest() : GrpcServiceTest(absl::Milliseconds(300)) {}
};

// An Import whose caller gave up before hallocd sent its fd sends none and
// imports nothing: the importer holds nothing, and the sharer's buffer is
// freed with the sharer's own Release.
TEST_F(SlowImportTest, AnImportItsCallerGaveUpOnBeforeItsFdWentImportsNothing) {
  const std::vector<uint64_t> ids = AllocateIds(1);
  ASSERT_EQ(ids.size(), 1u);
  auto channel = std::make_shared<FakeChannel>();
  std::shared_ptr<Session> importer = ImportPastItsDeadline(ids[0], channel);
  absl::SleepFor(absl::Milliseconds(500));  // the handler ran, after the deadline
  EXPECT_TRUE(channel->sent.empty()) << "an fd went to a caller that gave up";
  EXPECT_EQ(HeldBy(*importer), 0) << "an import nobody could receive holds the buffer";
  v1::ReleaseRequest rel;
  rel.add_buffer_ids(ids[0]);
  ASSERT_TRUE(core_.Release(*session_, rel).ok());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// The same for a Share: its caller gave up before the grant was made, so
// it never learns the grant's token or id. Before, that grant stayed (one of
// the buffer's grants) until the session ended, with nobody able to hand it
// on or revoke it.
class SlowShareTest : public GrpcServiceTest {
 protected:
  SlowShareTest() : GrpcServiceTest(absl::Milliseconds(300)) {}
};

TEST_F(SlowShareTest, AShareItsCallerGaveUpOnIsWithdrawn) {
  const std::vector<uint64_t> ids = AllocateIds(1);
  ASSERT_EQ(ids.size(), 1u);
  v1::ShareRequest share;
  share.set_buffer_id(ids[0]);
  share.mutable_peer()->set_uid(::getuid());
  v1::ShareResponse grant;
  auto ctx = Ctx(session_->token());
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
  EXPECT_EQ(stub_->Share(ctx.get(), share, &grant).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // The daemon side makes the grant after the caller gave up, then takes
  // it back.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (core_.Stats().grants_revoked_total() == 0) {
    ASSERT_LT(absl::Now(), until) << "the grant of a Share whose caller gave up is still there ("
                                  << core_.Stats().grants() << " live)";
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(core_.Stats().grants(), 0u);
  // A Share in time still makes its grant.
  ASSERT_TRUE(stub_->Share(Ctx(session_->token()).get(), share, &grant).ok());
  EXPECT_EQ(core_.Stats().grants(), 1u);
}

TEST_F(GrpcServiceTest, NoOrAWrongTokenIsUnauthenticatedAndAllocatesNothing) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  for (const std::string& token : {std::string(), std::string("0123"),
                                   session_->token() + "0"}) {
    EXPECT_EQ(stub_->Allocate(Ctx(token).get(), req, &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << token;
  }
  EXPECT_TRUE(channel_->sent.empty());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
  // A closed session's token stops working.
  const std::string token = session_->token();
  core_.CloseSession(session_->id());
  EXPECT_EQ(stub_->Allocate(Ctx(token).get(), req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(GrpcServiceTest, CoreErrorsKeepTheirCodes) {
  const std::string t = session_->token();
  v1::AllocateRequest zero;
  zero.mutable_desc()->set_size(0);
  v1::AllocateResponse resp;
  grpc::Status s = stub_->Allocate(Ctx(t).get(), zero, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("size"), std::string::npos) << s.error_message();

  v1::ReleaseRequest rel;
  rel.add_buffer_ids(12345);
  v1::ReleaseResponse rresp;
  EXPECT_EQ(stub_->Release(Ctx(t).get(), rel, &rresp).error_code(),
            grpc::StatusCode::NOT_FOUND);

  v1::ImportRequest imp;
  imp.set_grant_token("no-such-grant");
  v1::ImportResponse iresp;
  EXPECT_EQ(stub_->Import(Ctx(t).get(), imp, &iresp).error_code(),
            grpc::StatusCode::NOT_FOUND);

  v1::AllocateRequest prot;
  prot.mutable_desc()->set_size(4096);
  prot.mutable_desc()->set_usage(usage::kProtected);  // memfd cannot hold it
  EXPECT_EQ(stub_->Allocate(Ctx(t).get(), prot, &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// Bytes that are no request of the method's are the caller's fault:
// INVALID_ARGUMENT naming the message (ParsedUnaryHandler, grpc_methods.h),
// not gRPC 1.51's own INTERNAL with no message. Every unary method of the
// service, as its descriptor lists them: one left out of AddMethods would
// answer UNIMPLEMENTED here.
TEST_F(GrpcServiceTest, ARequestThatDoesNotParseIsInvalidArgument) {
  const google::protobuf::ServiceDescriptor* service =
      v1::AllocateRequest::descriptor()->file()->FindServiceByName("Allocator");
  ASSERT_NE(service, nullptr);
  grpc::GenericStub stub(server_->InProcessChannel(grpc::ChannelArguments()));
  // A field whose tag's varint never ends.
  const std::string garbage = "\x08\xff\xff";
  const auto call = [&](const std::string& method, const grpc::ByteBuffer* request) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, session_->token());
    grpc::ByteBuffer response;
    absl::Notification done;
    grpc::Status status;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), request, &response, [&](grpc::Status s) {
      status = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    return status;
  };
  int unary = 0;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* m = service->method(i);
    if (m->client_streaming() || m->server_streaming()) continue;
    ++unary;
    const std::string method = absl::StrCat("/", service->full_name(), "/", m->name());
    grpc::Slice slice(garbage);
    grpc::ByteBuffer bad(&slice, 1);
    grpc::Status s = call(method, &bad);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(s.error_message(),
              absl::StrCat("the request does not parse as a ", m->input_type()->full_name()))
        << method;
  }
  EXPECT_GE(unary, 10);
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// A unary call that came with no message at all (gRPC hands the handler
// no payload): INVALID_ARGUMENT too.
TEST(ParseRequestTest, NoMessageIsInvalidArgument) {
  v1::AllocateRequest req;
  grpc::Status s = ParseRequest(nullptr, &req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "no request message (a halloc.v1.AllocateRequest)");
}

TEST_F(GrpcServiceTest, IsSupportedAndStatsNeedNoSession) {
  v1::IsSupportedRequest req;
  req.mutable_desc()->set_size(4096);
  v1::IsSupportedResponse resp;
  ASSERT_TRUE(stub_->IsSupported(Ctx("").get(), req, &resp).ok());
  EXPECT_TRUE(resp.supported());
  EXPECT_EQ(resp.backend(), "memfd");
  req.mutable_desc()->set_size(0);
  ASSERT_TRUE(stub_->IsSupported(Ctx("").get(), req, &resp).ok());
  EXPECT_FALSE(resp.supported());
  EXPECT_EQ(resp.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  v1::StatsResponse stats;
  ASSERT_TRUE(stub_->Stats(Ctx("").get(), v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.sessions(), 1u);
}

// A ReleaseMany stream is one Release: its parts are gathered and released
// together, all or nothing, only once its `last` part came.
TEST_F(GrpcServiceTest, ReleaseManyReleasesItsPartsTogetherAllOrNothing) {
  const std::vector<uint64_t> ids = AllocateIds(4);
  ASSERT_EQ(ids.size(), 4u);
  const uint64_t unknown = ids.back() + 1000;
  // An id the session does not hold in the final part: none released
  // (the first parts' ids are still held).
  grpc::Status s = ReleaseMany({{ids[0], ids[1]}, {ids[2]}, {ids[3], unknown}});
  EXPECT_EQ(s.error_code(), grpc::NOT_FOUND) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 4u);
  // A stream that ends without its `last` part (cut, or cancelled) means
  // nothing: its ids are not all known.
  s = ReleaseMany({{ids[0]}, {ids[1]}}, /*ends=*/false);
  EXPECT_EQ(s.error_code(), grpc::CANCELLED) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 4u);
  // Its parts all give back holds, or all import references.
  s = ReleaseMany({{ids[0]}, {ids[1]}}, true, {false, true});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 4u);
  // Hold generations come with their parts, one per id: a reference named
  // by a generation that is not its hold's (the allocation's holds were
  // never imported: none has one) is given back already.
  s = ReleaseMany({{ids[0]}, {ids[1]}}, true, {true, true}, {{12345}, {12346}});
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 4u);
  s = ReleaseMany({{ids[0], ids[1]}, {ids[2]}}, true, {true, true}, {{12345}, {12346}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  // A part without generations names any hold for each of its ids, beside
  // a part with them (each id keeps its own: here ids[0]'s names no hold
  // it has, and ids[1]'s reference goes: an allocation is its hold's one
  // reference).
  s = ReleaseMany({{ids[0]}, {ids[1]}}, true, {true, true}, {{12345}, {}});
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 3u);
  s = ReleaseMany({{ids[0]}}, true, {true});
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 2u);
  // Parts after `last` are not read.
  s = ReleaseMany({{ids[2]}, {ids[3]}});
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
  // Without a session: refused before anything is read.
  auto ctx = Ctx("");
  v1::ReleaseResponse resp;
  auto writer = stub_->ReleaseMany(ctx.get(), &resp);
  v1::ReleaseRequest req;
  req.set_last(true);
  writer->Write(req);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::UNAUTHENTICATED);
}

// No Release names more ids than a session may hold, on a stream or not:
// the stream stops being read at the part that goes past it.
TEST_F(GrpcServiceTest, AReleaseNamesAtMostAsManyIdsAsASessionMayHold) {
  const uint64_t most = core_.max_release_ids();
  const std::vector<uint64_t> ids = AllocateIds(1);
  ASSERT_EQ(ids.size(), 1u);
  std::vector<uint64_t> half(most / 2, ids[0]);  // a held id, named many times
  grpc::Status s = ReleaseMany({half, half, {ids[0]}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << s.error_message();
  v1::ReleaseRequest req;
  for (uint64_t i = 0; i <= most; ++i) req.add_buffer_ids(ids[0]);
  EXPECT_EQ(core_.Release(*session_, req).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_.Stats().live_buffers(), 1u);
  // Exactly as many: released.
  s = ReleaseMany({half, half});
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// A ReleaseMany stream holds a server thread until its last part comes:
// at most kMaxReleaseStreams at once, so that slow (or idle) ones cannot
// take every thread; others meanwhile are RESOURCE_EXHAUSTED.
TEST_F(GrpcServiceTest, ReleaseManyStreamsAreFewAtATime) {
  struct Idle {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::ReleaseResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::ReleaseRequest>> writer;
  };
  std::vector<Idle> idle(AllocatorService::kMaxReleaseStreams);
  for (Idle& i : idle) {
    i.ctx = Ctx(session_->token());
    i.writer = stub_->ReleaseMany(i.ctx.get(), &i.resp);
  }
  // The idle ones are served on their own threads, not necessarily yet:
  // one more is refused once they are. (Asked before they all were, a
  // probe could take the last place for a moment and have an idle one
  // refused instead, and the probes then pass on: a fresh run saw it.)
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (service_.release_streams() < AllocatorService::kMaxReleaseStreams &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(service_.release_streams(), AllocatorService::kMaxReleaseStreams);
  grpc::Status s = ReleaseMany({{}});
  EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED) << s.error_message();
  // Other calls go on.
  EXPECT_EQ(AllocateIds(1).size(), 1u);
  // Ended, they make room.
  for (Idle& i : idle) {
    i.writer->WritesDone();
    EXPECT_EQ(i.writer->Finish().error_code(), grpc::CANCELLED);
  }
  s = ReleaseMany({{}});
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// A ReleaseMany whose client sends a part and then nothing holds its place
// only until it is StreamTimeLimits::release_many old (200 ms here): then
// it is ended with DEADLINE_EXCEEDED, nothing released, and the next
// stream gets its place. Before, it held it (and a server thread) for as
// long as its client kept it open: four such took ReleaseMany from
// everyone. Over the in-process channel and over a socket (hallocd's
// HTTP/2, where the status travels in the cancelled stream's trailers).
class ReleaseManyTimeTest : public GrpcServiceTest {
 protected:
  ReleaseManyTimeTest() : GrpcServiceTest(absl::ZeroDuration(), Times()) {}
  static StreamTimeLimits Times() {
    StreamTimeLimits times;
    times.release_many = absl::Milliseconds(200);
    return times;
  }
  // A stub on a connection of its own, as hallocd's clients have.
  std::unique_ptr<v1::Allocator::Stub> OverASocket() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    grpc::AddInsecureChannelFromFd(server_.get(), sv[0]);
    return v1::Allocator::NewStub(grpc::CreateInsecureChannelFromFd("hallocd", sv[1]));
  }
};

TEST_F(ReleaseManyTimeTest, AStreamThatStallsIsEndedReleasingNothingAndItsPlaceComesFree) {
  const std::vector<uint64_t> ids = AllocateIds(2);
  ASSERT_EQ(ids.size(), 2u);
  std::unique_ptr<v1::Allocator::Stub> socket_stub = OverASocket();
  struct Stalled {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::ReleaseResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::ReleaseRequest>> writer;
  };
  // Every place taken, half over each channel: a part each, not the last,
  // and then nothing. (The client's own deadline, far past the bound, only
  // so that the test ends without the bound.)
  std::vector<Stalled> stalled(AllocatorService::kMaxReleaseStreams);
  for (size_t i = 0; i < stalled.size(); ++i) {
    Stalled& st = stalled[i];
    st.ctx = Ctx(session_->token());
    st.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    st.writer = (i % 2 == 0 ? stub_ : socket_stub)->ReleaseMany(st.ctx.get(), &st.resp);
    v1::ReleaseRequest part;
    part.add_buffer_ids(ids[0]);
    ASSERT_TRUE(st.writer->Write(part)) << i;
  }
  // Ended well within 10 s (their bound is 200 ms), places freed.
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (service_.release_streams() > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(service_.release_streams(), 0) << "stalled ReleaseMany streams kept their places";
  for (size_t i = 0; i < stalled.size(); ++i) {
    const grpc::Status s = stalled[i].writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::DEADLINE_EXCEEDED) << i << ": " << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), "nothing released")) << s.error_message();
  }
  EXPECT_EQ(core_.Stats().live_buffers(), 2u) << "a stream cut before its end released ids";
  // A stream that comes whole is served, over either channel.
  grpc::Status s = ReleaseMany({{ids[0]}});
  EXPECT_TRUE(s.ok()) << s.error_message();
  auto ctx = Ctx(session_->token());
  v1::ReleaseResponse resp;
  auto writer = socket_stub->ReleaseMany(ctx.get(), &resp);
  v1::ReleaseRequest req;
  req.add_buffer_ids(ids[1]);
  req.set_last(true);
  EXPECT_TRUE(writer->Write(req));
  writer->WritesDone();
  s = writer->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

// List pages: page_size (0 or past kMaxListPage: kMaxListPage) buffers at
// most, next_page_token to ask for the rest; a token hallocd did not give
// is INVALID_ARGUMENT.
TEST_F(GrpcServiceTest, ListComesInPages) {
  const std::vector<uint64_t> ids = AllocateIds(3);
  ASSERT_EQ(ids.size(), 3u);
  v1::ListRequest req;
  req.set_page_size(2);
  v1::ListResponse first, second;
  ASSERT_TRUE(stub_->List(Ctx(session_->token()).get(), req, &first).ok());
  ASSERT_EQ(first.buffers_size(), 2);
  ASSERT_FALSE(first.next_page_token().empty());
  req.set_page_token(first.next_page_token());
  ASSERT_TRUE(stub_->List(Ctx(session_->token()).get(), req, &second).ok());
  ASSERT_EQ(second.buffers_size(), 1);
  EXPECT_EQ(second.next_page_token(), "");
  EXPECT_EQ(
      std::vector<uint64_t>({first.buffers(0).id(), first.buffers(1).id(), second.buffers(0).id()}),
      ids);
  req.set_page_size(0);  // the most a page holds
  req.clear_page_token();
  v1::ListResponse whole;
  ASSERT_TRUE(stub_->List(Ctx(session_->token()).get(), req, &whole).ok());
  EXPECT_EQ(whole.buffers_size(), 3);
  // "\xff": not UTF-8 either (page_token is bytes: it reaches hallocd).
  for (const char* bad : {"x", "-1", "12abc", "99999999999999999999999", "\xff"}) {
    req.set_page_token(bad);
    v1::ListResponse resp;
    EXPECT_EQ(stub_->List(Ctx(session_->token()).get(), req, &resp).error_code(),
              grpc::INVALID_ARGUMENT)
        << bad;
  }
}

// Dump pages as List does: page_size rows at most, the rest behind
// next_page_token; a token hallocd did not give is INVALID_ARGUMENT.
TEST_F(GrpcServiceTest, DumpComesInPages) {
  ASSERT_EQ(AllocateIds(1).size(), 1u);  // one session, one client charged
  v1::DumpRequest req;
  req.set_page_size(1);
  v1::DumpResponse first, second;
  ASSERT_TRUE(stub_->Dump(Ctx(session_->token()).get(), req, &first).ok());
  ASSERT_EQ(first.sessions_size(), 1);
  EXPECT_EQ(first.clients_size(), 0);
  ASSERT_FALSE(first.next_page_token().empty());
  req.set_page_token(first.next_page_token());
  ASSERT_TRUE(stub_->Dump(Ctx(session_->token()).get(), req, &second).ok());
  EXPECT_EQ(second.sessions_size(), 0);
  EXPECT_EQ(second.clients_size(), 1);
  EXPECT_EQ(second.next_page_token(), "");
  for (const char* bad : {"x", "s-1", "c!", "s\xff"}) {
    req.set_page_token(bad);
    v1::DumpResponse resp;
    EXPECT_EQ(stub_->Dump(Ctx(session_->token()).get(), req, &resp).error_code(),
              grpc::INVALID_ARGUMENT)
        << bad;
  }
}

// A server whose control connections are made as given uids (as
// GrpcListener notes them), and one session of this process's.
class GrpcAuditTest : public ::testing::Test {
 protected:
  GrpcAuditTest() : service_(&core_, peers_) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    Identity me;
    me.uid = ::getuid();
    me.pid = ::getpid();
    session_ = *core_.OpenSession(me, std::make_shared<FakeChannel>());
  }
  ~GrpcAuditTest() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // A control connection made, as GrpcListener would note it, by process
  // `pid` of `uid` (gid: the same number), started at `start`.
  std::unique_ptr<v1::Allocator::Stub> Connect(uid_t uid, pid_t pid = ::getpid(),
                                               std::optional<uint64_t> start = std::nullopt) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    ucred cred{};
    cred.pid = pid;
    cred.uid = uid;
    cred.gid = uid;
    peers_->Set(sv[0], cred, uid, start);
    grpc::AddInsecureChannelFromFd(server_.get(), sv[0]);
    return v1::Allocator::NewStub(grpc::CreateInsecureChannelFromFd("hallocd", sv[1]));
  }

  // Under a policy whose first rule, `name` (`fields` after its match),
  // matches this executable and `rest` follows: a session verified as this
  // executable, its process pinned as the broker pins it; `start`, its
  // process's start (for Connect). Skips where pidfd_open is missing.
  void OpenVerified(const std::string& name, const std::string& fields, const std::string& rest,
                    std::shared_ptr<Session>* session, std::optional<uint64_t>* start) {
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();
    absl::StatusOr<std::shared_ptr<const Policy>> policy =
        Policy::Parse(absl::StrCat("clients { name: \"", name, "\" match { exe: \"", self, "\" } ",
                                   fields, " }\n", rest),
                      "grpc_service_test");
    ASSERT_TRUE(policy.ok()) << policy.status();
    core_.SetPolicy(*policy);
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
    if (!pidfd) GTEST_SKIP() << "no pidfd_open here: " << std::strerror(errno);
    const ExeSample exe = SampleExe(pidfd.get(), ::getpid());
    ASSERT_TRUE(exe.file.has_value()) << "this process's executable was not vouched for";
    *start = ProcessStart(pidfd.get(), ::getpid());
    ASSERT_TRUE(start->has_value());
    Identity verified{::getuid(), ::getuid(), ::getpid(), exe.path, exe.file};
    *session = *core_.OpenSession(verified, std::make_shared<FakeChannel>(),
                                  SessionProcess{SharedFd(std::move(pidfd)), *start});
  }

  Allocator core_{std::make_unique<MemfdBackend>(), Limits()};
  std::shared_ptr<ControlPeers> peers_ = std::make_shared<ControlPeers>();
  AllocatorService service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<Session> session_;
};

// AUDIT lines of calls refused before a session is found (no token, a
// wrong one, or a token used from another uid) are limited per uid of the
// connection (ControlPeers), as other lines are. Before, they all shared
// one budget: one local user's flood of them silenced every other user's,
// here uid 1002's use of another uid's token.
TEST_F(GrpcAuditTest, OneUidsRefusalsDoNotSilenceAnothersAudit) {
  auto flooder = Connect(1001);
  auto other = Connect(1002);
  LogLines audit("AUDIT");
  absl::SleepFor(absl::Milliseconds(1100));  // a fresh budget window
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  v1::AllocateResponse resp;
  for (int i = 0; i < 40; ++i) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, session_->token());
    EXPECT_EQ(flooder->Allocate(&ctx, req, &resp).error_code(), grpc::PERMISSION_DENIED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata(kSessionMetadataKey, session_->token());
  EXPECT_EQ(other->Allocate(&ctx, req, &resp).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_GE(audit.Count("connection of uid 1001"), 1);
  // Who: the connection's peer as the kernel said, pid included.
  EXPECT_EQ(audit.Count(absl::StrCat("for uid 1002 pid ", ::getpid(), " ")), 1);
  EXPECT_EQ(audit.Count("connection of uid 1002"), 1)
      << "uid 1002's refusal was dropped: uid 1001 took the budget of every caller without "
         "a session";
}

// The same for IsSupported (a token used from another uid): its refusals
// were audited as an "unauthenticated caller" on one budget shared by all,
// so one uid's flood hid another's line and no line said who.
TEST_F(GrpcAuditTest, IsSupportedRefusalsAreLimitedPerUidToo) {
  auto flooder = Connect(1001);
  auto other = Connect(1002);
  LogLines audit("AUDIT");
  absl::SleepFor(absl::Milliseconds(1100));
  v1::IsSupportedRequest req;
  req.mutable_desc()->set_size(4096);
  v1::IsSupportedResponse resp;
  for (int i = 0; i < 40; ++i) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, session_->token());
    EXPECT_EQ(flooder->IsSupported(&ctx, req, &resp).error_code(), grpc::PERMISSION_DENIED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata(kSessionMetadataKey, session_->token());
  EXPECT_EQ(other->IsSupported(&ctx, req, &resp).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(audit.Count("connection of uid 1002"), 1)
      << "uid 1002's IsSupported refusal was dropped: uid 1001 took the shared budget";
  EXPECT_EQ(audit.Count(absl::StrCat("for uid 1002 pid ", ::getpid(), " ")), 1)
      << "the line does not say who (\"unauthenticated caller\")";
}

// A session's token speaks for its verified executable only on a control
// connection its own process made, as a broker request does only from it:
// another process of the session's uid holding the token (handed on, or
// read from the session's process) is judged by uid and gid alone. Before,
// any process of that uid with the token got the rules that match the
// session's executable, which the broker denies it.
TEST_F(GrpcAuditTest, ATokenCarriesTheVerifiedExecutableOnlyFromTheSessionsOwnProcess) {
  std::shared_ptr<Session> session;
  std::optional<uint64_t> start;
  ASSERT_NO_FATAL_FAILURE(OpenVerified(
      "trusted", "usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ_WRITE share_to: \"*\"",
      "clients { name: \"others\" match { any: true } }\n", &session, &start));
  if (IsSkipped()) return;
  // A pid that is not this process's (nor, being past pid_max, anyone's).
  const pid_t another = (1 << 22) + 1;

  v1::AllocateRequest alloc;
  alloc.mutable_desc()->set_size(4096);
  v1::ShareRequest share;
  share.mutable_peer()->set_uid(::getuid());
  v1::IsSupportedRequest ask;
  *ask.mutable_desc() = alloc.desc();
  const auto with_token = [&] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata(kSessionMetadataKey, session->token());
    return ctx;
  };

  auto own = Connect(::getuid(), ::getpid(), start);
  v1::AllocateResponse mine;
  grpc::Status s = own->Allocate(with_token().get(), alloc, &mine);
  ASSERT_TRUE(s.ok()) << s.error_message();
  share.set_buffer_id(mine.buffers(0).id());
  v1::ShareResponse grant;
  s = own->Share(with_token().get(), share, &grant);
  EXPECT_TRUE(s.ok()) << s.error_message();
  v1::IsSupportedResponse yes;
  ASSERT_TRUE(own->IsSupported(with_token().get(), ask, &yes).ok());
  EXPECT_TRUE(yes.supported()) << yes.reason();

  // Another process; and a connection made by a process that had this
  // pid before this one (it started earlier, and exited since: the pid came
  // round to the session's process).
  const auto judged_as_others = [&](v1::Allocator::Stub& other, const std::string& what) {
    v1::AllocateResponse theirs;
    grpc::Status s = other.Allocate(with_token().get(), alloc, &theirs);
    EXPECT_EQ(s.error_code(), grpc::PERMISSION_DENIED) << what << ": " << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), "others"))
        << what << ": " << s.error_message();
    v1::ShareResponse grant;
    s = other.Share(with_token().get(), share, &grant);
    EXPECT_EQ(s.error_code(), grpc::PERMISSION_DENIED) << what << ": " << s.error_message();
    v1::IsSupportedResponse no;
    ASSERT_TRUE(other.IsSupported(with_token().get(), ask, &no).ok());
    EXPECT_FALSE(no.supported()) << what;
  };
  LogLines audit("AUDIT");
  judged_as_others(*Connect(::getuid(), another, start), "another pid");
  // Its refusals are logged as who was judged, not as the session's
  // verified process.
  EXPECT_GE(audit.Count(absl::StrCat("pid ", another, " exe ''")), 1);
  judged_as_others(*Connect(::getuid(), ::getpid(), *start - 1), "this pid, started earlier");
  judged_as_others(*Connect(::getuid(), ::getpid()), "this pid, start not known");
  EXPECT_EQ(core_.Stats().live_buffers(), 1u) << "only the session's own process allocated";
  EXPECT_EQ(core_.Stats().grants(), 1u) << "only the session's own process shared";
}

// IsSupported on gRPC answers as Allocate does, the session's rule
// bounding what another process asks for on its token: a session verified
// as an executable capped at read, and another process of its uid whose
// own rule allows read-write. gRPC's IsSupported said yes to what its
// Allocate refused (the broker's said no to both).
TEST_F(GrpcAuditTest, IsSupportedBoundsAnotherProcessByTheSessionsRuleAsAllocateDoes) {
  std::shared_ptr<Session> session;
  std::optional<uint64_t> start;
  ASSERT_NO_FATAL_FAILURE(
      OpenVerified("cam", "usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ",
                   "clients { name: \"user\" match { any: true } usages: \"*\" heaps: \"*\" "
                   "max_cpu_access: CPU_ACCESS_READ_WRITE }\n",
                   &session, &start));
  if (IsSkipped()) return;
  auto other = Connect(::getuid(), (1 << 22) + 1, start);  // no one's pid
  v1::IsSupportedRequest ask;
  ask.mutable_desc()->set_size(4096);
  ask.mutable_desc()->set_usage(usage::kCpuReadOften | usage::kCpuWriteOften);
  v1::AllocateRequest alloc;
  *alloc.mutable_desc() = ask.desc();
  grpc::ClientContext a, b;
  a.AddMetadata(kSessionMetadataKey, session->token());
  b.AddMetadata(kSessionMetadataKey, session->token());
  v1::AllocateResponse made;
  const grpc::Status refused = other->Allocate(&a, alloc, &made);
  EXPECT_EQ(refused.error_code(), grpc::PERMISSION_DENIED) << refused.error_message();
  v1::IsSupportedResponse said;
  ASSERT_TRUE(other->IsSupported(&b, ask, &said).ok());
  EXPECT_FALSE(said.supported()) << "IsSupported said yes to what Allocate refused";
  EXPECT_EQ(said.code(), static_cast<int>(absl::StatusCode::kPermissionDenied)) << said.reason();
  EXPECT_EQ(said.reason(), refused.error_message());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

}  // namespace
}  // namespace halloc
