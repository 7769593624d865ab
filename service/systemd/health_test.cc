// What generic gRPC tooling sees on hallocd's control socket: the standard
// health service and server reflection (grpc.reflection.v1alpha), against
// the real binary.
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "service/systemd/testing.h"

namespace halloc {
namespace {

using ::testing::Contains;
using ::testing::IsSupersetOf;
using systemd_testing::Child;
using HealthStatus = grpc::health::v1::HealthCheckResponse;
namespace reflection = grpc::reflection::v1alpha;

constexpr absl::Duration kTimeout = absl::Seconds(20);

class HealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    absl::StatusOr<std::unique_ptr<Child>> c = Child::Start(
        {systemd_testing::Runfile("service/hallocd"), "--control_socket=" + control_,
         "--broker_socket=" + (dir_ / "broker.sock")},
        {}, dir_ / "hallocd.log");
    ASSERT_TRUE(c.ok()) << c.status();
    hallocd_ = *std::move(c);
    ASSERT_TRUE(systemd_testing::WaitForPath(dir_ / "broker.sock", kTimeout)) << hallocd_->Log();
  }

  // One reflection request on a fresh stream, and its answer.
  reflection::ServerReflectionResponse Ask(const reflection::ServerReflectionRequest& req) {
    auto stub = reflection::ServerReflection::NewStub(grpc::CreateChannel(
        absl::StrCat("unix:", control_), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoSeconds(kTimeout));
    auto stream = stub->ServerReflectionInfo(&ctx);
    reflection::ServerReflectionResponse resp;
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->WritesDone());
    EXPECT_TRUE(stream->Read(&resp));
    const grpc::Status s = stream->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  // The FileDescriptorProtos reflection returns for `req`.
  std::vector<google::protobuf::FileDescriptorProto> Files(
      const reflection::ServerReflectionRequest& req) {
    const reflection::ServerReflectionResponse resp = Ask(req);
    EXPECT_TRUE(resp.has_file_descriptor_response()) << resp.DebugString();
    std::vector<google::protobuf::FileDescriptorProto> files;
    for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      files.emplace_back();
      EXPECT_TRUE(files.back().ParseFromString(bytes));
    }
    return files;
  }

  testing::TempDir dir_{"sd"};
  const std::string control_ = dir_ / "control.sock";
  std::unique_ptr<Child> hallocd_;
};

// Check: SERVING for the server ("") and for halloc.v1.Allocator;
// NOT_FOUND for a service hallocd does not have.
TEST_F(HealthTest, ServingForTheServerAndTheAllocator) {
  for (const char* service : {"", "halloc.v1.Allocator"}) {
    SCOPED_TRACE(absl::StrCat("service '", service, "'"));
    absl::StatusOr<HealthStatus::ServingStatus> s =
        systemd_testing::CheckHealth(control_, service, kTimeout);
    ASSERT_TRUE(s.ok()) << s.status() << "\n" << hallocd_->Log();
    EXPECT_EQ(*s, HealthStatus::SERVING);
  }
  absl::StatusOr<HealthStatus::ServingStatus> unknown =
      systemd_testing::CheckHealth(control_, "no.such.Service", kTimeout);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
}

// A Watch (what load balancers and supervisors hold open) sees SERVING,
// then NOT_SERVING as soon as hallocd starts shutting down, before its
// calls are cut.
TEST_F(HealthTest, WatchSeesNotServingAtShutdown) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      absl::StrCat("unix:", control_), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoSeconds(kTimeout));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("halloc.v1.Allocator");
  auto watch = stub->Watch(&ctx, req);
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp)) << hallocd_->Log();
  EXPECT_EQ(resp.status(), HealthStatus::SERVING);
  hallocd_->Signal(SIGTERM);
  ASSERT_TRUE(watch->Read(&resp)) << "the stream ended without NOT_SERVING";
  EXPECT_EQ(resp.status(), HealthStatus::NOT_SERVING);
  ctx.TryCancel();
}

// Reflection lists the allocator beside the health and reflection services.
TEST_F(HealthTest, ReflectionListsTheServices) {
  reflection::ServerReflectionRequest req;
  req.set_list_services("*");
  const reflection::ServerReflectionResponse resp = Ask(req);
  ASSERT_TRUE(resp.has_list_services_response()) << resp.DebugString();
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  EXPECT_THAT(names, IsSupersetOf({"halloc.v1.Allocator", "grpc.health.v1.Health",
                                   "grpc.reflection.v1alpha.ServerReflection"}));
}

// ... and hands out the allocator's schema, enough for a generic client to
// build requests: the service with its methods, and the files it imports.
TEST_F(HealthTest, ReflectionDescribesTheAllocator) {
  reflection::ServerReflectionRequest req;
  req.set_file_containing_symbol("halloc.v1.Allocator");
  const std::vector<google::protobuf::FileDescriptorProto> files = Files(req);
  ASSERT_FALSE(files.empty());
  const google::protobuf::FileDescriptorProto& file = files.front();
  EXPECT_EQ(file.package(), "halloc.v1");
  ASSERT_EQ(file.service_size(), 1);
  std::vector<std::string> methods;
  for (const auto& m : file.service(0).method()) methods.push_back(m.name());
  EXPECT_THAT(methods, IsSupersetOf({"Allocate", "Release", "Share", "Import"}));

  for (const std::string& dep : file.dependency()) {
    SCOPED_TRACE(dep);
    reflection::ServerReflectionRequest by_name;
    by_name.set_file_by_filename(dep);
    const std::vector<google::protobuf::FileDescriptorProto> got = Files(by_name);
    ASSERT_FALSE(got.empty());
    EXPECT_EQ(got.front().name(), dep);
  }
  EXPECT_THAT(file.dependency(), Contains("halloc/v1/types.proto"));
}

}  // namespace
}  // namespace halloc
