#include "clients/cpp/halloc/base/usage.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace halloc::usage {
namespace {

struct Named {
  uint64_t mask;   // bits this entry is tested against
  uint64_t value;  // (usage & mask) == value means "present"
  const char* name;
};

// Enum values first (their mask is a nibble), then single-bit flags in bit
// order. ToString prints in this order.
constexpr Named kNames[] = {
    {kCpuReadMask, kCpuReadRarely, "cpu_read_rarely"},
    {kCpuReadMask, kCpuReadOften, "cpu_read_often"},
    {kCpuWriteMask, kCpuWriteRarely, "cpu_write_rarely"},
    {kCpuWriteMask, kCpuWriteOften, "cpu_write_often"},
    {kGpuTexture, kGpuTexture, "gpu_texture"},
    {kGpuRenderTarget, kGpuRenderTarget, "gpu_render_target"},
    {kComposerOverlay, kComposerOverlay, "composer_overlay"},
    {kComposerClientTarget, kComposerClientTarget, "composer_client_target"},
    {kProtected, kProtected, "protected"},
    {kComposerCursor, kComposerCursor, "composer_cursor"},
    {kVideoEncoder, kVideoEncoder, "video_encoder"},
    {kCameraOutput, kCameraOutput, "camera_output"},
    {kCameraInput, kCameraInput, "camera_input"},
    {kRenderscript, kRenderscript, "renderscript"},
    {kVideoDecoder, kVideoDecoder, "video_decoder"},
    {kSensorDirectData, kSensorDirectData, "sensor_direct_data"},
    {kGpuDataBuffer, kGpuDataBuffer, "gpu_data_buffer"},
    {kGpuCubeMap, kGpuCubeMap, "gpu_cube_map"},
    {kGpuMipmapComplete, kGpuMipmapComplete, "gpu_mipmap_complete"},
    {kHwImageEncoder, kHwImageEncoder, "hw_image_encoder"},
    {kFrontBuffer, kFrontBuffer, "front_buffer"},
};

// Parse-only spellings (they name the value 0).
constexpr Named kZeroNames[] = {
    {kCpuReadMask, kCpuReadNever, "cpu_read_never"},
    {kCpuWriteMask, kCpuWriteNever, "cpu_write_never"},
    {0, 0, "none"},
};

bool IsDefinedCpuValue(uint64_t nibble) {
  return nibble == 0 || nibble == 2 || nibble == 3;
}

absl::StatusOr<uint64_t> ParseToken(absl::string_view token) {
  std::string lower = absl::AsciiStrToLower(token);
  for (const Named& n : kNames) {
    if (lower == n.name) return n.value;
  }
  for (const Named& n : kZeroNames) {
    if (lower == n.name) return uint64_t{0};
  }
  uint64_t value = 0;
  bool ok = absl::StartsWith(lower, "0x")
                ? absl::SimpleHexAtoi(absl::string_view(lower).substr(2), &value)
                : absl::SimpleAtoi(lower, &value);
  if (ok && !lower.empty() && lower.find_first_of("+-") == std::string::npos) {
    return value;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown usage \"", token,
                   "\" (want a name like gpu_texture or a number like 0x100)"));
}

}  // namespace

absl::Status Validate(uint64_t usage) {
  if (uint64_t reserved = usage & kReservedMask; reserved != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "usage 0x%x has reserved bits 0x%x set", usage, reserved));
  }
  if (!IsDefinedCpuValue(usage & kCpuReadMask)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "usage 0x%x: CPU read value %u is undefined (0 never, 2 rarely, 3 often)",
        usage, usage & kCpuReadMask));
  }
  if (!IsDefinedCpuValue((usage & kCpuWriteMask) >> 4)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "usage 0x%x: CPU write value 0x%x is undefined (0x00 never, 0x20 "
        "rarely, 0x30 often)",
        usage, usage & kCpuWriteMask));
  }
  if ((usage & kProtected) && (usage & (kCpuReadMask | kCpuWriteMask))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "usage 0x%x: PROTECTED with CPU read or write bits (protected content "
        "is for devices only)",
        usage));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Parse(absl::string_view s) {
  uint64_t usage = 0;
  for (absl::string_view token :
       absl::StrSplit(s, absl::ByAnyChar(",| \t\n"), absl::SkipEmpty())) {
    absl::StatusOr<uint64_t> bits = ParseToken(token);
    if (!bits.ok()) return bits.status();
    // Two different CPU read (or write) values cannot be ORed meaningfully.
    for (uint64_t nibble : {kCpuReadMask, kCpuWriteMask}) {
      if ((usage & nibble) != 0 && (*bits & nibble) != 0 &&
          (usage & nibble) != (*bits & nibble)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "usage \"", s, "\" gives two different CPU ",
            nibble == kCpuReadMask ? "read" : "write", " values"));
      }
    }
    usage |= *bits;
  }
  if (absl::Status st = Validate(usage); !st.ok()) return st;
  return usage;
}

std::string ToString(uint64_t usage) {
  std::vector<std::string> parts;
  uint64_t named = 0;
  for (const Named& n : kNames) {
    if ((usage & n.mask) == n.value) {
      parts.push_back(n.name);
      named |= n.mask;
    }
  }
  if (uint64_t rest = usage & ~named; rest != 0) {
    parts.push_back(absl::StrFormat("0x%x", rest));
  }
  if (parts.empty()) return "none";
  return absl::StrJoin(parts, "|");
}

}  // namespace halloc::usage
