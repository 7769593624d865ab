// The reflection service alone, over an in-process channel: what generic
// gRPC tools ask, answered from the generated descriptor pool, and at most
// kMaxStreams streams at a time. (On a real hallocd: systemd/health_test.)
#include "service/reflection.h"

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

namespace v1alpha = grpc::reflection::v1alpha;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// hallocd's limits with a reflection stream's idle time and lifetime set.
StreamTimeLimits ReflectionTimes(absl::Duration idle, absl::Duration lifetime) {
  StreamTimeLimits times;
  times.reflection_idle = idle;
  times.reflection_lifetime = lifetime;
  return times;
}

class ReflectionTest : public ::testing::Test {
 protected:
  explicit ReflectionTest(std::shared_ptr<const ControlPeers> peers = nullptr,
                          const StreamTimeLimits& times = {})
      : service_({"halloc.v1.Allocator", "grpc.reflection.v1alpha.ServerReflection"},
                 std::move(peers), nullptr, times) {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    stub_ = v1alpha::ServerReflection::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  ~ReflectionTest() override { server_->Shutdown(); }

  // The answers to `reqs`, asked in turn on one stream.
  std::vector<v1alpha::ServerReflectionResponse> Ask(
      const std::vector<v1alpha::ServerReflectionRequest>& reqs) {
    grpc::ClientContext ctx;
    auto stream = stub_->ServerReflectionInfo(&ctx);
    std::vector<v1alpha::ServerReflectionResponse> out;
    for (const auto& req : reqs) {
      v1alpha::ServerReflectionResponse resp;
      if (!stream->Write(req) || !stream->Read(&resp)) break;
      out.push_back(resp);
    }
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
    return out;
  }

  // The names of the files in `resp`.
  static std::vector<std::string> FileNames(const v1alpha::ServerReflectionResponse& resp) {
    std::vector<std::string> names;
    for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      EXPECT_TRUE(file.ParseFromString(bytes));
      names.push_back(file.name());
    }
    return names;
  }

  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1alpha::ServerReflectionRequest,
                                             v1alpha::ServerReflectionResponse>>
        stream;
  };

  static v1alpha::ServerReflectionRequest List() {
    v1alpha::ServerReflectionRequest list;
    list.set_list_services("");
    return list;
  }

  // `n` streams, each answered once: served (holding its thread) from
  // then on. Fewer if one was not answered. With `deadline_s`, each
  // gives up after so many seconds.
  std::vector<std::unique_ptr<Open>> OpenStreams(int n, int deadline_s = 0) {
    std::vector<std::unique_ptr<Open>> open;
    for (int i = 0; i < n; ++i) {
      auto o = std::make_unique<Open>();
      if (deadline_s > 0) {
        o->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
      }
      o->stream = stub_->ServerReflectionInfo(&o->ctx);
      v1alpha::ServerReflectionResponse resp;
      if (!o->stream->Write(List()) || !o->stream->Read(&resp)) break;
      open.push_back(std::move(o));
    }
    return open;
  }

  static void Close(std::unique_ptr<Open>& o) {
    o->stream->WritesDone();
    EXPECT_TRUE(o->stream->Finish().ok());
  }

  // How one more stream ends.
  grpc::Status OneMore() {
    grpc::ClientContext ctx;
    auto stream = stub_->ServerReflectionInfo(&ctx);
    stream->Write(List());
    stream->WritesDone();
    v1alpha::ServerReflectionResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    return stream->Finish();
  }

  ReflectionService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1alpha::ServerReflection::Stub> stub_;
};

TEST_F(ReflectionTest, ListsItsServicesAndHandsOutTheirFilesWithTheirDependenciesOnce) {
  v1alpha::ServerReflectionRequest list, symbol, again, method, by_name;
  list.set_list_services("*");
  list.set_host("localhost");
  symbol.set_file_containing_symbol("halloc.v1.Allocator");
  again.set_file_containing_symbol("halloc.v1.Allocator");
  method.set_file_containing_symbol("halloc.v1.Allocator.ReleaseMany");
  by_name.set_file_by_filename("halloc/v1/types.proto");
  const auto got = Ask({list, symbol, again, method, by_name});
  ASSERT_EQ(got.size(), 5u);
  std::vector<std::string> services;
  for (const auto& s : got[0].list_services_response().service()) services.push_back(s.name());
  EXPECT_THAT(services,
              ElementsAre("halloc.v1.Allocator", "grpc.reflection.v1alpha.ServerReflection"));
  EXPECT_EQ(got[0].valid_host(), "localhost");
  EXPECT_EQ(got[0].original_request().list_services(), "*");
  // The service's file, then what it imports; asked again on the same
  // stream, the file alone (its dependencies were sent).
  EXPECT_THAT(FileNames(got[1]), ElementsAre("halloc/v1/allocator.proto", "halloc/v1/types.proto"));
  EXPECT_THAT(FileNames(got[2]), ElementsAre("halloc/v1/allocator.proto"));
  EXPECT_THAT(FileNames(got[3]), ElementsAre("halloc/v1/allocator.proto"));
  EXPECT_THAT(FileNames(got[4]), ElementsAre("halloc/v1/types.proto"));
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(got[1].file_descriptor_response().file_descriptor_proto(0)));
  ASSERT_EQ(file.service_size(), 1);
  EXPECT_EQ(file.service(0).name(), "Allocator");
}

TEST_F(ReflectionTest, WhatIsNotThereIsNotFound) {
  v1alpha::ServerReflectionRequest symbol, name, type, ext, none;
  symbol.set_file_containing_symbol("halloc.v1.Nothing");
  name.set_file_by_filename("halloc/v1/nothing.proto");
  type.set_all_extension_numbers_of_type("halloc.v1.Nothing");
  ext.mutable_file_containing_extension()->set_containing_type("halloc.v1.BufferInfo");
  ext.mutable_file_containing_extension()->set_extension_number(1000);
  const auto got = Ask({symbol, name, type, ext, none});
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_THAT(got[0].error_response().error_message(), HasSubstr("halloc.v1.Nothing"));
  EXPECT_EQ(got[4].error_response().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  // A type that exists has no extensions (proto3).
  v1alpha::ServerReflectionRequest info;
  info.set_all_extension_numbers_of_type("halloc.v1.BufferInfo");
  const auto exts = Ask({info});
  ASSERT_EQ(exts.size(), 1u);
  EXPECT_EQ(exts[0].all_extension_numbers_response().base_type_name(), "halloc.v1.BufferInfo");
  EXPECT_EQ(exts[0].all_extension_numbers_response().extension_number_size(), 0);
}

// Each stream holds a server thread for as long as its client keeps it
// open: at most kMaxStreams at once; others meanwhile are refused.
TEST_F(ReflectionTest, StreamsAreFewAtATime) {
  std::vector<std::unique_ptr<Open>> open = OpenStreams(ReflectionService::kMaxStreams);
  ASSERT_EQ(open.size(), static_cast<size_t>(ReflectionService::kMaxStreams));
  EXPECT_EQ(OneMore().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  Close(open.back());
  open.pop_back();
  EXPECT_EQ(Ask({List()}).size(), 1u);  // room again
  for (auto& o : open) Close(o);
}

// A stream holds its place only while used: one without a request for
// StreamTimeLimits::reflection_idle, or open for reflection_lifetime, is
// ended (DEADLINE_EXCEEDED) and its place comes free. Before, streams
// opened and left idle kept their places for as long as their clients
// kept them.
class ReflectionTimeTest : public ReflectionTest {
 protected:
  ReflectionTimeTest()
      : ReflectionTest(nullptr, ReflectionTimes(absl::Seconds(1), absl::Seconds(60))) {}

  // How `o` ends, waiting no more than 10 s (the stream's own deadline
  // is 20 s).
  static grpc::Status Ends(Open& o) {
    const absl::Time start = absl::Now();
    v1alpha::ServerReflectionResponse resp;
    EXPECT_FALSE(o.stream->Read(&resp));
    EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "not ended in time";
    return o.stream->Finish();
  }
};

TEST_F(ReflectionTimeTest, AnIdleStreamIsEndedAndItsPlaceComesFree) {
  std::vector<std::unique_ptr<Open>> open = OpenStreams(ReflectionService::kMaxStreams, 20);
  ASSERT_EQ(open.size(), static_cast<size_t>(ReflectionService::kMaxStreams));
  // Each request moves the idle limit: asked every 400 ms, past the 1 s
  // limit in all, the first stream is served on.
  for (int i = 0; i < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(400));
    v1alpha::ServerReflectionResponse resp;
    ASSERT_TRUE(open[0]->stream->Write(List())) << i;
    ASSERT_TRUE(open[0]->stream->Read(&resp)) << i;
  }
  for (auto& o : open) {
    const grpc::Status s = Ends(*o);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("without a request"));
  }
  EXPECT_EQ(Ask({List()}).size(), 1u);  // room again
}

class ReflectionLifetimeTest : public ReflectionTest {
 protected:
  ReflectionLifetimeTest()
      : ReflectionTest(nullptr, ReflectionTimes(absl::Seconds(60), absl::Milliseconds(300))) {}
};

TEST_F(ReflectionLifetimeTest, AStreamInUseEndsAfterItsLifetime) {
  std::vector<std::unique_ptr<Open>> open = OpenStreams(1, 20);
  ASSERT_EQ(open.size(), 1u);
  // Asked on and on: ended all the same, well within 10 s.
  const absl::Time until = absl::Now() + absl::Seconds(10);
  v1alpha::ServerReflectionResponse resp;
  while (open[0]->stream->Write(List()) && open[0]->stream->Read(&resp)) {
    ASSERT_LT(absl::Now(), until) << "a stream in use was never ended";
    absl::SleepFor(absl::Milliseconds(20));
  }
  const grpc::Status s = open[0]->stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_EQ(Ask({List()}).size(), 1u);
}

// With hallocd's ControlPeers, streams count per uid too: one uid gets
// kMaxStreamsPerUid of them. (An in-process call is no connection hallocd
// handed over: all of them count as one unknown uid.)
class ReflectionPerUidTest : public ReflectionTest {
 protected:
  ReflectionPerUidTest() : ReflectionTest(std::make_shared<ControlPeers>()) {}
};

TEST_F(ReflectionPerUidTest, OneUidGetsItsShare) {
  std::vector<std::unique_ptr<Open>> open = OpenStreams(ReflectionService::kMaxStreamsPerUid);
  ASSERT_EQ(open.size(), static_cast<size_t>(ReflectionService::kMaxStreamsPerUid));
  const grpc::Status s = OneMore();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("for one uid"));
  for (auto& o : open) Close(o);
}

// One uid's reflection streams may hold places for a quarter of their
// lifetime in all within twice it (StreamSlots::PlaceBudget), however each
// ended: else ending each stream just before the cut and opening another
// kept the places for ever. Streams done at once use next to nothing of
// it.
class ReflectionBudgetTest : public ReflectionTest {
 protected:
  ReflectionBudgetTest()
      : ReflectionTest(std::make_shared<ControlPeers>(),
                       ReflectionTimes(absl::Seconds(30), absl::Seconds(3))) {}
};

TEST_F(ReflectionBudgetTest, StreamsEndedJustBeforeTheirCutUseUpTheUidsBudget) {
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Ask({List()}).size(), 1u) << i;
  // A stream held 1.2 s (short of the 3 s cut): past the 750 ms allowed.
  std::vector<std::unique_ptr<Open>> open = OpenStreams(1);
  ASSERT_EQ(open.size(), 1u);
  absl::SleepFor(absl::Milliseconds(1200));
  Close(open[0]);
  const grpc::Status s = OneMore();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("held their places for 750ms or more within 6s"));
}

}  // namespace
}  // namespace halloc
