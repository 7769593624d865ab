// A downstream workspace's own test against a private hallocd: a camera
// (the fixture's client()) allocates an NV12 frame, fills it, and shares it
// read-only with a compositor (a second client of the same daemon), which
// imports it and reads the same pages through the layout hallocd reported.
#include <drm_fourcc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <optional>

#include "clients/cpp/halloc/client.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace {

using ::absl::StatusCode;
using ::halloc::Access;
using ::halloc::Buffer;
using ::halloc::Client;
using ::halloc::Mapping;
namespace v1 = ::halloc::v1;

constexpr uint32_t kWidth = 640;
constexpr uint32_t kHeight = 480;
constexpr uint64_t kCameraUsage = 0x20000;   // camera output
constexpr uint64_t kTextureUsage = 0x100;    // GPU texture

// The luma and chroma samples the camera writes at (x, y).
uint8_t Luma(uint32_t x, uint32_t y) { return static_cast<uint8_t>(x + 3 * y); }
uint8_t Chroma(uint32_t x, uint32_t y) { return static_cast<uint8_t>(5 * x ^ y); }

// Fills (or, with `check`, compares) an NV12 frame through `layout`: plane 0
// is Y, plane 1 is interleaved CbCr at half resolution.
void Frame(const v1::BufferLayout& layout, uint8_t* base, bool check) {
  ASSERT_EQ(layout.planes_size(), 2);
  const v1::PlaneLayout& y = layout.planes(0);
  const v1::PlaneLayout& uv = layout.planes(1);
  for (uint32_t row = 0; row < kHeight; ++row) {
    uint8_t* p = base + y.offset() + row * y.stride();
    for (uint32_t col = 0; col < kWidth; ++col) {
      if (!check) {
        p[col] = Luma(col, row);
      } else if (p[col] != Luma(col, row)) {
        FAIL() << "Y differs at " << col << "," << row;
      }
    }
  }
  for (uint32_t row = 0; row < kHeight / 2; ++row) {
    uint8_t* p = base + uv.offset() + row * uv.stride();
    for (uint32_t col = 0; col < kWidth; ++col) {
      if (!check) {
        p[col] = Chroma(col, row);
      } else if (p[col] != Chroma(col, row)) {
        FAIL() << "CbCr differs at " << col << "," << row;
      }
    }
  }
}

class FrameHandoffTest : public halloc::testing::HallocTest {
 protected:
  // The camera's frame, written and shared read-only with `compositor_`.
  void AllocateAndShare() {
    absl::StatusOr<Buffer> frame = client().Allocate(halloc::ImageDescriptor(
        kWidth, kHeight, DRM_FORMAT_NV12, kCameraUsage | kTextureUsage, "frame"));
    ASSERT_TRUE(frame.ok()) << frame.status();
    frame_.emplace(*std::move(frame));
    const v1::BufferLayout& layout = frame_->layout();
    ASSERT_GE(layout.planes_size(), 2);
    EXPECT_GE(layout.planes(0).stride(), kWidth);
    EXPECT_GE(layout.planes(1).offset(),
              layout.planes(0).stride() * kHeight);  // CbCr after Y
    absl::StatusOr<Mapping> w = frame_->Map(Access::kReadWrite);
    ASSERT_TRUE(w.ok()) << w.status();
    Frame(layout, w->as<uint8_t>(), /*check=*/false);

    absl::StatusOr<v1::Grant> grant =
        client().Share(frame_->id(), getuid(), v1::CPU_ACCESS_READ);
    ASSERT_TRUE(grant.ok()) << grant.status();
    absl::StatusOr<Client> compositor = daemon().Connect();
    ASSERT_TRUE(compositor.ok()) << compositor.status();
    compositor_.emplace(*std::move(compositor));
    absl::StatusOr<Buffer> imported = compositor_->Import(grant->token());
    ASSERT_TRUE(imported.ok()) << imported.status();
    imported_.emplace(*std::move(imported));
  }

  void TearDown() override {
    imported_.reset();
    compositor_.reset();
    frame_.reset();
    HallocTest::TearDown();
  }

  std::optional<Buffer> frame_;
  std::optional<Client> compositor_;
  std::optional<Buffer> imported_;
};

TEST_F(FrameHandoffTest, CompositorReadsTheCamerasFrame) {
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare());
  EXPECT_EQ(imported_->id(), frame_->id());
  EXPECT_EQ(imported_->info().cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_EQ(imported_->layout().SerializeAsString(),
            frame_->layout().SerializeAsString());
  absl::StatusOr<Mapping> r = imported_->Map(Access::kRead);
  ASSERT_TRUE(r.ok()) << r.status();
  Frame(imported_->layout(), r->as<uint8_t>(), /*check=*/true);
}

TEST_F(FrameHandoffTest, SamePagesNotACopy) {
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare());
  struct stat a, b;
  ASSERT_EQ(fstat(frame_->fd(), &a), 0);
  ASSERT_EQ(fstat(imported_->fd(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  absl::StatusOr<Mapping> w = frame_->Map(Access::kReadWrite);
  absl::StatusOr<Mapping> r = imported_->Map(Access::kRead);
  ASSERT_TRUE(w.ok() && r.ok());
  // The camera's next write shows in the compositor's mapping.
  const uint64_t y0 = frame_->layout().planes(0).offset();
  w->as<uint8_t>()[y0] = 0xa5;
  EXPECT_EQ(r->as<uint8_t>()[y0], 0xa5);
}

TEST_F(FrameHandoffTest, TheCompositorCannotWrite) {
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare());
  EXPECT_EQ(imported_->Map(Access::kReadWrite).status().code(),
            StatusCode::kPermissionDenied);
  // Nor can it hand out more than it got.
  EXPECT_EQ(compositor_->Share(imported_->id(), getuid(), v1::CPU_ACCESS_READ_WRITE)
                .status()
                .code(),
            StatusCode::kPermissionDenied);
}

TEST_F(FrameHandoffTest, TheFrameLivesUntilBothRelease) {
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare());
  absl::StatusOr<v1::BufferInfo> info = compositor_->Describe(frame_->id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->holders_size(), 2);

  ASSERT_TRUE(client().Release(frame_->id()).ok());
  absl::StatusOr<v1::StatsResponse> stats = client().Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->live_buffers(), 1u);  // the compositor still holds it

  ASSERT_TRUE(compositor_->Release(imported_->id()).ok());
  stats = client().Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->live_buffers(), 0u);
}

}  // namespace
