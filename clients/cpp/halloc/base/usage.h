// Buffer usage: a 64-bit mask with Android's BufferUsage bit values
// (hardware/interfaces/graphics/common/aidl/.../BufferUsage.aidl).
//
// Bits 0-3 and 4-7 are enums (CPU read / CPU write: never, rarely, often);
// every other defined bit is a flag. Bits 28-31 and 48-63 belong to vendors:
// they are accepted and passed through, but halloc gives them no meaning.
// Everything else is reserved and refused with INVALID_ARGUMENT, as are the
// CPU enum values Android does not define (1 and 4-15 in either nibble).
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_USAGE_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_USAGE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace halloc::usage {

// CPU read enum (bits 0-3).
inline constexpr uint64_t kCpuReadMask = 0xfull;
inline constexpr uint64_t kCpuReadNever = 0x0ull;
inline constexpr uint64_t kCpuReadRarely = 0x2ull;
inline constexpr uint64_t kCpuReadOften = 0x3ull;
// CPU write enum (bits 4-7).
inline constexpr uint64_t kCpuWriteMask = 0xfull << 4;
inline constexpr uint64_t kCpuWriteNever = 0x0ull << 4;
inline constexpr uint64_t kCpuWriteRarely = 0x2ull << 4;
inline constexpr uint64_t kCpuWriteOften = 0x3ull << 4;
// Flags.
inline constexpr uint64_t kGpuTexture = 1ull << 8;
inline constexpr uint64_t kGpuRenderTarget = 1ull << 9;
inline constexpr uint64_t kComposerOverlay = 1ull << 11;
inline constexpr uint64_t kComposerClientTarget = 1ull << 12;
inline constexpr uint64_t kProtected = 1ull << 14;
inline constexpr uint64_t kComposerCursor = 1ull << 15;
inline constexpr uint64_t kVideoEncoder = 1ull << 16;
inline constexpr uint64_t kCameraOutput = 1ull << 17;
inline constexpr uint64_t kCameraInput = 1ull << 18;
// Deprecated in Android (RenderScript is gone) but still a defined bit, so
// it is accepted; it asks for nothing special.
inline constexpr uint64_t kRenderscript = 1ull << 20;
inline constexpr uint64_t kVideoDecoder = 1ull << 22;
inline constexpr uint64_t kSensorDirectData = 1ull << 23;
inline constexpr uint64_t kGpuDataBuffer = 1ull << 24;
inline constexpr uint64_t kGpuCubeMap = 1ull << 25;
inline constexpr uint64_t kGpuMipmapComplete = 1ull << 26;
inline constexpr uint64_t kHwImageEncoder = 1ull << 27;
inline constexpr uint64_t kFrontBuffer = 1ull << 32;
// Vendor extensions: bits 28-31 and 48-63.
inline constexpr uint64_t kVendorMask = 0xfull << 28;
inline constexpr uint64_t kVendorMaskHi = 0xffffull << 48;

// Every bit Validate() accepts (enum nibbles included whole).
inline constexpr uint64_t kKnownMask =
    kCpuReadMask | kCpuWriteMask | kGpuTexture | kGpuRenderTarget |
    kComposerOverlay | kComposerClientTarget | kProtected | kComposerCursor |
    kVideoEncoder | kCameraOutput | kCameraInput | kRenderscript |
    kVideoDecoder | kSensorDirectData | kGpuDataBuffer | kGpuCubeMap |
    kGpuMipmapComplete | kHwImageEncoder | kFrontBuffer | kVendorMask |
    kVendorMaskHi;
// Bits 10, 13, 19, 21 and 33-47.
inline constexpr uint64_t kReservedMask = ~kKnownMask;

// OK, or INVALID_ARGUMENT naming the reserved bits (or the undefined CPU
// enum value) found in `usage`, or PROTECTED together with CPU read or
// write bits (protected content is for devices only).
absl::Status Validate(uint64_t usage);

// Parses a list of usage names and/or numbers separated by ',', '|' or
// spaces, ORed together: "camera_output,composer_overlay,cpu_read_often",
// "gpu_texture|0x10000000", "0x20800". Names are the constants above in
// snake case without the k (cpu_read_often, gpu_texture, front_buffer, ...),
// case-insensitive; "none" and "" are 0. The result is Validate()d.
absl::StatusOr<uint64_t> Parse(absl::string_view s);

// Inverse of Parse: "cpu_read_often|gpu_texture"; "none" for 0. Bits without
// a name (vendor, reserved, undefined CPU values) are appended as one hex
// number, so Parse(ToString(u)) == u for every valid `u`.
std::string ToString(uint64_t usage);

// True when the CPU read (write) enum is anything but NEVER.
inline bool WantsCpuRead(uint64_t usage) { return (usage & kCpuReadMask) != 0; }
inline bool WantsCpuWrite(uint64_t usage) { return (usage & kCpuWriteMask) != 0; }

}  // namespace halloc::usage

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_USAGE_H_
