// WritePng / ReadPng round trips, read back with libpng: pixels at known
// positions, strides wider than a row, and the errors.
#include "clients/png/png.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace halloc::png {
namespace {

std::string TempPath(const char* name) {
  const char* dir = getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

TEST(PngTest, RoundTripsPixelsAtKnownPositions) {
  for (uint32_t pad : {0u, 4u, 60u}) {
    SCOPED_TRACE(testing::Message() << "row padding " << pad);
    constexpr uint32_t kW = 37, kH = 11;
    const size_t stride = kW * 4 + pad;
    std::vector<uint8_t> bytes(stride * kH, 0xee);  // padding must not leak in
    for (uint32_t y = 0; y < kH; ++y) {
      for (uint32_t x = 0; x < kW; ++x) {
        // X byte set to garbage: it is not alpha.
        const uint32_t p = 0x5a000000u | (x * 6) << 16 | (y * 20) << 8 | ((x + y) & 0xff);
        std::memcpy(&bytes[y * stride + x * 4], &p, 4);
      }
    }
    const std::string path = TempPath("round.png");
    ASSERT_TRUE(WritePng(path, bytes.data(), kW, kH, stride).ok());
    absl::StatusOr<Image> img = ReadPng(path);
    ASSERT_TRUE(img.ok()) << img.status();
    ASSERT_EQ(img->width, kW);
    ASSERT_EQ(img->height, kH);
    EXPECT_EQ(img->at(0, 0), 0xff000000u);
    EXPECT_EQ(img->at(36, 10), 0xff000000u | (36 * 6) << 16 | (200 << 8) | 46);
    EXPECT_EQ(img->at(5, 3), 0xff000000u | (30 << 16) | (60 << 8) | 8);
    unlink(path.c_str());
  }
}

TEST(PngTest, RefusesEmptyImagesAndShortStrides) {
  uint32_t px[4] = {};
  EXPECT_EQ(WritePng(TempPath("x.png"), px, 0, 1, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WritePng(TempPath("x.png"), px, 2, 2, 7).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngTest, WriteToAMissingDirectoryFails) {
  uint32_t px[1] = {0xff0000};
  absl::Status s = WritePng("/nonexistent-dir/x.png", px, 1, 1, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

TEST(PngTest, ReadRefusesMissingFilesAndNonPngs) {
  EXPECT_EQ(ReadPng(TempPath("missing.png")).status().code(), absl::StatusCode::kNotFound);
  const std::string path = TempPath("not.png");
  std::ofstream(path) << "not a png at all";
  EXPECT_EQ(ReadPng(path).status().code(), absl::StatusCode::kInvalidArgument);
  unlink(path.c_str());
}

}  // namespace
}  // namespace halloc::png
