// Describe and SetMetadata through libhalloc on both paths against a real
// hallocd: the broker fast path (with no control socket at all) and gRPC
// give the same answers and the same codes (IsSupported too); and List,
// page by page.
#include <drm_fourcc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"
#include "service/daemon.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

class ClientMetadataTest : public testing::HallocTest {};

constexpr int32_t kBt2020Pq = 281411584;  // BT2020 | ST2084 | FULL

TEST_F(ClientMetadataTest, BothPathsAgreeOnDescriptionsAndMetadata) {
  std::vector<StatusCode> codes[2];
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    // On the broker path, every call below goes on the broker.
    const auto via = fast ? testing::TestDaemon::Via::kBrokerOnly : testing::TestDaemon::Via::kGrpc;
    absl::StatusOr<Client> producer = daemon().Connect(via);
    absl::StatusOr<Client> consumer = daemon().Connect(via);
    ASSERT_TRUE(producer.ok() && consumer.ok()) << producer.status() << consumer.status();
    absl::StatusOr<Buffer> b =
        producer->Allocate(ImageDescriptor(64, 32, DRM_FORMAT_NV12, 0, "frame"));
    ASSERT_TRUE(b.ok()) << b.status();

    v1::BufferMetadata ds;
    ds.set_dataspace(kBt2020Pq);
    absl::StatusOr<v1::BufferInfo> set = producer->SetMetadata(b->id(), v1::METADATA_DATASPACE, ds);
    ASSERT_TRUE(set.ok()) << set.status();
    EXPECT_EQ(set->metadata().dataspace(), kBt2020Pq);
    v1::BufferMetadata crop;
    for (int plane = 0; plane < 2; ++plane) {
      v1::Rect* r = crop.add_crop();
      r->set_left(2);
      r->set_top(2);
      r->set_right(plane == 0 ? 62 : 30);
      r->set_bottom(plane == 0 ? 30 : 14);
    }
    ASSERT_TRUE(producer->SetMetadata(b->id(), v1::METADATA_CROP, crop).ok());

    // A read-only importer reads what the producer set.
    absl::StatusOr<v1::Grant> g = producer->Share(b->id(), getuid(), v1::CPU_ACCESS_READ);
    ASSERT_TRUE(g.ok()) << g.status();
    absl::StatusOr<Buffer> got = consumer->Import(g->token());
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<v1::BufferInfo> seen = consumer->Describe(got->id());
    ASSERT_TRUE(seen.ok()) << seen.status();
    EXPECT_EQ(seen->name(), "frame");
    EXPECT_EQ(seen->metadata().dataspace(), kBt2020Pq);
    ASSERT_EQ(seen->metadata().crop_size(), 2);
    EXPECT_EQ(seen->metadata().crop(1).right(), 30);
    EXPECT_EQ(seen->cpu_access(), v1::CPU_ACCESS_READ);

    // Refused alike on both paths: an unknown buffer, a bad value, a field
    // that never changes, and the producer's fields from a read-only holder.
    v1::BufferMetadata negative;
    negative.set_dataspace(-1);
    for (absl::Status s : {producer->Describe(uint64_t{1} << 40).status()}) {
      EXPECT_TRUE(absl::StartsWith(s.message(), "Describe: ")) << s;
      codes[fast ? 0 : 1].push_back(s.code());
    }
    for (absl::Status s :
         {producer->SetMetadata(uint64_t{1} << 40, v1::METADATA_DATASPACE, ds).status(),
          producer->SetMetadata(b->id(), v1::METADATA_DATASPACE, negative).status(),
          producer->SetMetadata(b->id(), v1::METADATA_WIDTH, ds).status(),
          consumer->SetMetadata(got->id(), v1::METADATA_DATASPACE, ds).status()}) {
      EXPECT_FALSE(s.ok());
      EXPECT_TRUE(absl::StartsWith(s.message(), "SetMetadata: ")) << s;
      codes[fast ? 0 : 1].push_back(s.code());
    }
    // Nothing refused changed anything.
    absl::StatusOr<v1::BufferInfo> after = producer->Describe(b->id());
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->metadata().dataspace(), kBt2020Pq);
  }
  EXPECT_EQ(codes[0], codes[1]);
  EXPECT_EQ(codes[0],
            (std::vector<StatusCode>{StatusCode::kNotFound, StatusCode::kNotFound,
                                     StatusCode::kInvalidArgument, StatusCode::kInvalidArgument,
                                     StatusCode::kPermissionDenied}));
}

// IsSupported on the broker (a client with no control socket at all) and
// over gRPC: the same answers, field by field, yes or no, judged by the
// same plan and the caller's policy rule (here one whose max_buffer_bytes
// is 64 KiB).
TEST_F(ClientMetadataTest, BothPathsAgreeOnIsSupported) {
  const std::string policy = daemon().dir() + "/small.textproto";
  {
    std::ofstream out(policy);
    out << "clients { name: \"small-buffers\" match { any: true } usages: \"*\" heaps: \"*\"\n"
           "  max_cpu_access: CPU_ACCESS_READ_WRITE max_buffer_bytes: 65536 }\n";
    ASSERT_TRUE(out.good());
  }
  ASSERT_EQ(::chmod(policy.c_str(), 0644), 0);  // not group-writable under umask 002
  DaemonOptions options = testing::TestDaemon::DefaultOptions();
  options.policy_file = policy;
  absl::StatusOr<std::unique_ptr<testing::TestDaemon>> small = testing::TestDaemon::Start(options);
  ASSERT_TRUE(small.ok()) << small.status();
  const std::vector<std::pair<v1::BufferDescriptor, uint32_t>> asked = {
      {BlobDescriptor(4096, 0, "blob"), 1},
      {ImageDescriptor(64, 32, DRM_FORMAT_NV12, 0, "frame"), 2},
      {ImageDescriptor(64, 32, 0x12345678, 0, "no-such-format"), 1},
      {BlobDescriptor(0), 1},
      {BlobDescriptor(1 << 20, 0, "past-the-rule"), 1},
      {BlobDescriptor(4096), 100000},
  };
  std::vector<v1::IsSupportedResponse> answers[2];
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "broker" : "grpc");
    absl::StatusOr<Client> c = (*small)->Connect(fast ? testing::TestDaemon::Via::kBrokerOnly
                                                      : testing::TestDaemon::Via::kGrpc);
    ASSERT_TRUE(c.ok()) << c.status();
    for (const auto& [desc, count] : asked) {
      absl::StatusOr<v1::IsSupportedResponse> r = c->IsSupported(desc, count);
      ASSERT_TRUE(r.ok()) << r.status();
      answers[fast ? 0 : 1].push_back(*std::move(r));
    }
  }
  ASSERT_EQ(answers[0].size(), asked.size());
  ASSERT_EQ(answers[1].size(), asked.size());
  for (size_t i = 0; i < asked.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(answers[0][i].DebugString(), answers[1][i].DebugString());
  }
  const std::vector<v1::IsSupportedResponse>& a = answers[0];
  EXPECT_TRUE(a[0].supported());
  EXPECT_EQ(a[0].backend(), "memfd");
  EXPECT_TRUE(a[1].supported());
  EXPECT_EQ(a[1].layout().planes_size(), 2);
  for (size_t i = 2; i < asked.size(); ++i) {
    EXPECT_FALSE(a[i].supported()) << i;
    EXPECT_NE(a[i].code(), 0) << i;
    EXPECT_FALSE(a[i].reason().empty()) << i;
  }
  EXPECT_TRUE(absl::StrContains(a[4].reason(), "small-buffers")) << a[4].reason();
}

// hallocd lists at most 1000 buffers a reply (ListRequest.page_size):
// libhalloc asks page after page, and hands back the whole listing, by id.
TEST_F(ClientMetadataTest, AListingOfMoreBuffersThanAPageHoldsComesWhole) {
  std::vector<uint64_t> ids;
  for (int call = 0; call < 17; ++call) {  // 1088 buffers, their fds closed
    absl::StatusOr<std::vector<Buffer>> bs = client().Allocate(BlobDescriptor(4096), 64);
    ASSERT_TRUE(bs.ok()) << bs.status();
    for (const Buffer& b : *bs) ids.push_back(b.id());
  }
  absl::StatusOr<std::vector<v1::BufferInfo>> mine = client().List();
  ASSERT_TRUE(mine.ok()) << mine.status();
  std::vector<uint64_t> listed;
  for (const v1::BufferInfo& b : *mine) listed.push_back(b.id());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(listed, ids);
  EXPECT_TRUE(client().Release(ids).ok());
  mine = client().List();
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_TRUE(mine->empty());
}

}  // namespace
}  // namespace halloc
