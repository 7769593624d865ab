// The compositor's errors on the host, where there is no DRM device and
// hallocd hands out memfds: a missing device, frames KMS cannot take.
#include "clients/compositor/kms.h"

#include <drm_fourcc.h>
#include <sys/mman.h>

#include "clients/compositor/pattern.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc::compositor {
namespace {

class KmsHostTest : public halloc::testing::HallocTest {};

TEST_F(KmsHostTest, NoSuchDeviceIsNotFound) {
  absl::StatusOr<KmsDisplay> d = KmsDisplay::Open("no-such-driver");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound) << d.status();
  EXPECT_NE(d.status().message().find("no-such-driver"), absl::string_view::npos);
}

TEST_F(KmsHostTest, BlobsAndMemfdsCannotBeScannedOut) {
  absl::StatusOr<Buffer> blob = client().Allocate(BlobDescriptor(4096));
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(CheckScanoutLayout(*blob).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<Buffer> image = client().Allocate(
      ImageDescriptor(64, 32, DRM_FORMAT_XRGB8888, usage::kCpuWriteOften, "frame"));
  ASSERT_TRUE(image.ok()) << image.status();
  if (image->is_dmabuf()) GTEST_SKIP() << "hallocd gave a dma-buf here; the guest tests it";
  absl::Status s = CheckScanoutLayout(*image);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("not a dma-buf"), absl::string_view::npos) << s;
}

TEST_F(KmsHostTest, ABufferSmallerThanItsLayoutIsRefused) {
  absl::StatusOr<Buffer> image = client().Allocate(
      ImageDescriptor(64, 32, DRM_FORMAT_XRGB8888, usage::kCpuWriteOften, "frame"));
  ASSERT_TRUE(image.ok()) << image.status();
  v1::BufferInfo info = image->info();
  info.set_size(info.layout().planes(0).stride() * 16);  // half the rows
  absl::StatusOr<UniqueFd> fd = image->TakeFd();
  ASSERT_TRUE(fd.ok());
  Buffer shrunk(info, *std::move(fd));
  absl::Status s = CheckScanoutLayout(shrunk);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("smaller than its layout"), absl::string_view::npos) << s;
}

TEST_F(KmsHostTest, APlaneWhoseEndWrapsIsRefused) {
  absl::StatusOr<Buffer> image = client().Allocate(
      ImageDescriptor(64, 32, DRM_FORMAT_XRGB8888, usage::kCpuWriteOften, "frame"));
  ASSERT_TRUE(image.ok()) << image.status();
  v1::BufferInfo info = image->info();
  // offset + size is 2^64 + 4096: it wraps to 4096, inside the buffer.
  v1::PlaneLayout* plane = info.mutable_layout()->mutable_planes(0);
  plane->set_offset(8192);
  plane->set_size(UINT64_MAX - 4095);
  absl::StatusOr<UniqueFd> fd = image->TakeFd();
  ASSERT_TRUE(fd.ok());
  Buffer lying(info, *std::move(fd));
  absl::Status s = CheckScanoutLayout(lying);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("smaller than its layout"), absl::string_view::npos) << s;
}

TEST_F(KmsHostTest, PatternsFillXrgbFramesAndRefuseOthers) {
  absl::StatusOr<Buffer> image = client().Allocate(
      ImageDescriptor(64, 4, DRM_FORMAT_XRGB8888, usage::kCpuWriteOften | usage::kCpuReadOften));
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_TRUE(FillBars(*image).ok());
  absl::StatusOr<Mapping> map = image->Map(Access::kRead);
  ASSERT_TRUE(map.ok());
  const uint64_t stride = image->layout().planes(0).stride();
  const auto* row3 = reinterpret_cast<const uint32_t*>(map->as<uint8_t>() + 3 * stride);
  EXPECT_EQ(row3[0], kBars[0]);
  EXPECT_EQ(row3[8], kBars[1]);
  EXPECT_EQ(row3[63], kBars[7]);
  absl::StatusOr<Buffer> blob = client().Allocate(BlobDescriptor(4096, usage::kCpuWriteOften));
  ASSERT_TRUE(blob.ok());
  EXPECT_EQ(FillSolid(*blob, 0xff00ff00).code(), absl::StatusCode::kInvalidArgument);
}

// A layout whose rows do not fit its buffer is refused, not filled past
// the mapping: a stride narrower than a row (its last row overran a
// 4 KiB buffer by 640 bytes), an offset past the end, or a stride so
// large that stride * height wraps to a small number.
TEST_F(KmsHostTest, PatternsRefuseLayoutsWhoseRowsDoNotFit) {
  absl::StatusOr<Buffer> image = client().Allocate(
      ImageDescriptor(64, 4, DRM_FORMAT_XRGB8888, usage::kCpuWriteOften | usage::kCpuReadOften));
  ASSERT_TRUE(image.ok()) << image.status();
  const v1::BufferInfo good = image->info();
  absl::StatusOr<UniqueFd> fd = image->TakeFd();
  ASSERT_TRUE(fd.ok());
  const SharedFd shared(*std::move(fd));
  auto refused = [&](uint32_t width, uint64_t offset, uint64_t stride) {
    v1::BufferInfo info = good;
    info.mutable_layout()->set_width(width);
    info.mutable_layout()->mutable_planes(0)->set_offset(offset);
    info.mutable_layout()->mutable_planes(0)->set_stride(stride);
    absl::StatusOr<UniqueFd> dup = shared.Dup();
    if (!dup.ok()) return absl::Status(dup.status());
    return FillSolid(Buffer(info, *std::move(dup)), 0xff00ff00);
  };
  const uint64_t size = good.size();
  EXPECT_EQ(refused(static_cast<uint32_t>(size / 4), 0, 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused(64, size, 256).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused(64, 0, (uint64_t{1} << 62) + 256).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused(0, 0, 0).code(), absl::StatusCode::kInvalidArgument);  // not a division by 0
  EXPECT_TRUE(refused(64, 0, 256).ok());  // the real layout still fills
}

TEST(FourccNameTest, PrintsTheFourCharacters) {
  EXPECT_EQ(FourccName(DRM_FORMAT_XRGB8888), "XR24");
  EXPECT_EQ(FourccName(DRM_FORMAT_NV12), "NV12");
}

}  // namespace
}  // namespace halloc::compositor
