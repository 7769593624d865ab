// Requests hallocd will not read whole: past 64 KiB (a broker record's
// limit) a gRPC request is refused unparsed, whatever it is and whoever
// sends it, so that no client has hallocd parse megabytes of protobuf.
#include "tests/integration/abuse_fixture.h"

namespace halloc {
namespace {

using RequestSizeTest = AbuseTest;

// hallocd reads at most 64 KiB of a gRPC request (--grpc_max_message_bytes,
// the broker's record limit; gRPC's default is 4 MiB): a longer one is
// RESOURCE_EXHAUSTED before it is parsed. Under the limit the request is
// read and judged as before.
TEST_F(RequestSizeTest, OversizedRequestsAreRefusedUnread) {
  StartDaemon(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE }\n");
  auto stub = v1::Allocator::NewStub(
      grpc::CreateChannel("unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
  // IsSupported needs no session; its descriptor's name is read and judged.
  auto ask_named = [&stub](size_t name_bytes, v1::IsSupportedResponse* resp) {
    v1::IsSupportedRequest req;
    req.mutable_desc()->set_size(4096);
    req.mutable_desc()->set_name(std::string(name_bytes, 'n'));
    grpc::ClientContext ctx;
    return stub->IsSupported(&ctx, req, resp);
  };
  v1::IsSupportedResponse resp;
  grpc::Status s = ask_named(60 << 10, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(resp.supported()) << "a 60 KiB name";
  for (const size_t bytes : {size_t{65} << 10, size_t{4000} << 10}) {
    s = ask_named(bytes, &resp);
    EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED) << bytes << ": " << s.error_message();
  }
  // The connection and hallocd go on serving.
  s = ask_named(16, &resp);
  EXPECT_TRUE(s.ok() && resp.supported()) << s.error_message() << " " << resp.reason();
  absl::StatusOr<Client> c = Client::Connect(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Status after = c->Allocate(BlobDescriptor(4096)).status();
  EXPECT_TRUE(after.ok()) << after;
}

// Parsing makes a request many times its size (each 2-byte empty entry of
// a repeated field is an object of its own): at gRPC's default limit of
// 4 MiB, eight such SetMetadata requests, sent with no session, took
// hallocd from 22 MB to 835 MB (and reflection's requests, 8 of them, to
// 1.3 GB). Past 64 KiB they are refused unread, and leave hallocd's memory
// about as it was.
TEST_F(RequestSizeTest, ParsingCannotMultiplyRequestsInHallocdsMemory) {
  StartDaemon("clients { name: \"all\" match { any: true } }\n");
  auto stub = v1::Allocator::NewStub(
      grpc::CreateChannel("unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
  v1::SetMetadataRequest req;
  req.set_buffer_id(1);
  req.set_type(v1::METADATA_CROP);
  for (int i = 0; i < 2'000'000; ++i) req.mutable_value()->add_crop();
  ASSERT_GT(req.ByteSizeLong(), size_t{3} << 20);
  struct Call {
    grpc::ClientContext ctx;
    v1::SetMetadataResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SetMetadataResponse>> rpc;
  };
  grpc::CompletionQueue cq;
  const long before = daemon_->PeakRssKib();
  ASSERT_GT(before, 0);
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 8; ++i) {
    auto c = std::make_unique<Call>();
    c->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    c->rpc = stub->AsyncSetMetadata(&c->ctx, req, &cq);
    c->rpc->Finish(&c->resp, &c->status, c.get());
    calls.push_back(std::move(c));
  }
  for (size_t done = 0; done < calls.size(); ++done) {
    void* tag;
    bool fine;
    ASSERT_TRUE(cq.Next(&tag, &fine));
    const grpc::Status& s = static_cast<Call*>(tag)->status;
    EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED) << s.error_message();
  }
  const long grown = daemon_->PeakRssKib() - before;
  EXPECT_LT(grown, 64 * 1024) << "hallocd's peak RSS grew by " << grown << " KiB";
  absl::StatusOr<Client> c = Client::Connect(opts_);
  ASSERT_TRUE(c.ok()) << c.status();
}

}  // namespace
}  // namespace halloc
