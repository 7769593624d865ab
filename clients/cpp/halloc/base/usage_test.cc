#include "clients/cpp/halloc/base/usage.h"

#include <cstdint>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc::usage {
namespace {

using ::testing::HasSubstr;

// The values of BufferUsage.aidl, written out independently.
TEST(UsageTest, ProtectedWithCpuBitsIsAContradiction) {
  EXPECT_TRUE(Validate(kProtected | kGpuTexture).ok());
  EXPECT_EQ(Validate(kProtected | kCpuReadOften).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Validate(kProtected | kCpuWriteRarely).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Validate(kCpuReadOften | kGpuTexture).ok());
}

TEST(Usage, ValuesMatchAndroidBufferUsage) {
  EXPECT_EQ(kCpuReadMask, 0xfu);
  EXPECT_EQ(kCpuReadRarely, 2u);
  EXPECT_EQ(kCpuReadOften, 3u);
  EXPECT_EQ(kCpuWriteMask, 0xf0u);
  EXPECT_EQ(kCpuWriteRarely, 0x20u);
  EXPECT_EQ(kCpuWriteOften, 0x30u);
  EXPECT_EQ(kGpuTexture, 0x100u);
  EXPECT_EQ(kGpuRenderTarget, 0x200u);
  EXPECT_EQ(kComposerOverlay, 0x800u);
  EXPECT_EQ(kComposerClientTarget, 0x1000u);
  EXPECT_EQ(kProtected, 0x4000u);
  EXPECT_EQ(kComposerCursor, 0x8000u);
  EXPECT_EQ(kVideoEncoder, 0x10000u);
  EXPECT_EQ(kCameraOutput, 0x20000u);
  EXPECT_EQ(kCameraInput, 0x40000u);
  EXPECT_EQ(kRenderscript, 0x100000u);
  EXPECT_EQ(kVideoDecoder, 0x400000u);
  EXPECT_EQ(kSensorDirectData, 0x800000u);
  EXPECT_EQ(kGpuDataBuffer, 0x1000000u);
  EXPECT_EQ(kGpuCubeMap, 0x2000000u);
  EXPECT_EQ(kGpuMipmapComplete, 0x4000000u);
  EXPECT_EQ(kHwImageEncoder, 0x8000000u);
  EXPECT_EQ(kFrontBuffer, 0x100000000u);
  EXPECT_EQ(kVendorMask, 0xf0000000u);
  EXPECT_EQ(kVendorMaskHi, 0xffff000000000000u);
  EXPECT_EQ(kReservedMask, 0x0000fffe00282400u);
}

TEST(Usage, ValidateAcceptsDefinedAndVendorBits) {
  EXPECT_TRUE(Validate(0).ok());
  EXPECT_TRUE(Validate(kCpuReadOften | kCpuWriteRarely | kGpuTexture |
                       kCameraOutput | kFrontBuffer | kRenderscript)
                  .ok());
  EXPECT_TRUE(Validate(kVendorMask | kVendorMaskHi).ok());
}

TEST(Usage, ValidateRefusesEachReservedBit) {
  for (int bit = 0; bit < 64; ++bit) {
    uint64_t u = uint64_t{1} << bit;
    if ((u & kReservedMask) == 0) continue;
    SCOPED_TRACE(bit);
    absl::Status st = Validate(kGpuTexture | u);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    char hex[32];
    snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(u));
    EXPECT_THAT(st.message(), HasSubstr(std::string("reserved bits ") + hex));
  }
}

TEST(Usage, ValidateRefusesUndefinedCpuValues) {
  for (uint64_t v = 0; v < 16; ++v) {
    SCOPED_TRACE(v);
    bool defined = v == 0 || v == 2 || v == 3;
    EXPECT_EQ(Validate(v).ok(), defined);
    EXPECT_EQ(Validate(v << 4).ok(), defined);
    if (!defined) {
      EXPECT_EQ(Validate(v).code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(Usage, Parse) {
  EXPECT_EQ(*Parse("camera_output,composer_overlay,cpu_read_often"),
            kCameraOutput | kComposerOverlay | kCpuReadOften);
  EXPECT_EQ(*Parse("GPU_TEXTURE | 0x10000000"), kGpuTexture | 0x10000000u);
  EXPECT_EQ(*Parse("0x20800"), kCameraOutput | kComposerOverlay);
  EXPECT_EQ(*Parse("256"), kGpuTexture);
  EXPECT_EQ(*Parse(""), 0u);
  EXPECT_EQ(*Parse("none"), 0u);
  EXPECT_EQ(*Parse("cpu_read_never,cpu_write_often"), kCpuWriteOften);
  EXPECT_EQ(*Parse("cpu_read_often,0x3"), kCpuReadOften);
}

TEST(Usage, ParseRefusesBadInput) {
  for (const char* bad : {"bogus", "gpu_texture,,x", "0x", "0xzz", "-1",
                          "0x400", "cpu_read_rarely,cpu_read_often", "0x1",
                          "99999999999999999999999"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(Parse(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(Usage, ToString) {
  EXPECT_EQ(ToString(0), "none");
  EXPECT_EQ(ToString(kCpuReadOften | kGpuTexture), "cpu_read_often|gpu_texture");
  EXPECT_EQ(ToString(kCameraOutput | kComposerOverlay | kCpuReadOften),
            "cpu_read_often|composer_overlay|camera_output");
  EXPECT_EQ(ToString(kGpuTexture | 0x10000000u), "gpu_texture|0x10000000");
  EXPECT_EQ(ToString(0x400), "0x400");  // reserved: still printable
}

TEST(Usage, EveryNameRoundTrips) {
  for (uint64_t u : {kCpuReadRarely, kCpuReadOften, kCpuWriteRarely,
                     kCpuWriteOften, kGpuTexture, kGpuRenderTarget,
                     kComposerOverlay, kComposerClientTarget, kProtected,
                     kComposerCursor, kVideoEncoder, kCameraOutput,
                     kCameraInput, kRenderscript, kVideoDecoder,
                     kSensorDirectData, kGpuDataBuffer, kGpuCubeMap,
                     kGpuMipmapComplete, kHwImageEncoder, kFrontBuffer}) {
    SCOPED_TRACE(u);
    std::string s = ToString(u);
    EXPECT_EQ(s.find('|'), std::string::npos) << s;
    EXPECT_EQ(s.find("0x"), std::string::npos) << s;
    EXPECT_EQ(*Parse(s), u);
  }
}

TEST(Usage, RandomValidUsagesRoundTrip) {
  std::mt19937_64 rng(3);
  const uint64_t cpu_values[] = {0, 2, 3};
  for (int i = 0; i < 5000; ++i) {
    uint64_t u = rng() & ~kReservedMask & ~(kCpuReadMask | kCpuWriteMask);
    u |= cpu_values[rng() % 3] | (cpu_values[rng() % 3] << 4);
    if (u & (kCpuReadMask | kCpuWriteMask)) u &= ~kProtected;  // a contradiction
    ASSERT_TRUE(Validate(u).ok()) << u;
    absl::StatusOr<uint64_t> back = Parse(ToString(u));
    ASSERT_TRUE(back.ok()) << ToString(u) << ": " << back.status();
    ASSERT_EQ(*back, u) << ToString(u);
  }
}

TEST(Usage, WantsCpu) {
  EXPECT_FALSE(WantsCpuRead(kGpuTexture | kCpuWriteOften));
  EXPECT_TRUE(WantsCpuRead(kCpuReadRarely));
  EXPECT_TRUE(WantsCpuWrite(kCpuWriteRarely));
  EXPECT_FALSE(WantsCpuWrite(kCpuReadOften | kCameraOutput));
}

}  // namespace
}  // namespace halloc::usage
