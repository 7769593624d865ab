// PNG files of XRGB8888 images (DRM_FORMAT_XRGB8888: one little-endian
// 32-bit word per pixel, 0xXXRRGGBB), through libpng's simplified API.
// The compositor's writeback pictures are written with WritePng; tests
// read pictures back (those, weston's screenshots) with ReadPng.
#ifndef HALLOC_CLIENTS_PNG_PNG_H_
#define HALLOC_CLIENTS_PNG_PNG_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace halloc::png {

// An image in memory: rows of `width` pixels, 0xffRRGGBB, no padding.
struct Image {
  uint32_t width = 0;
  uint32_t height = 0;
  std::vector<uint32_t> pixels;
  uint32_t at(uint32_t x, uint32_t y) const { return pixels[size_t(y) * width + x]; }
};

// Writes `height` rows of `width` XRGB8888 pixels, `stride` bytes apart
// starting at `data`, to `path` as an 8-bit RGB PNG (X is dropped).
// INVALID_ARGUMENT for an empty image or a stride shorter than a row;
// the file's errno (or libpng's message) otherwise.
absl::Status WritePng(const std::string& path, const void* data, uint32_t width, uint32_t height,
                      size_t stride);

// Reads any PNG into 0xffRRGGBB pixels (alpha composed over black).
// NOT_FOUND when the file is missing, INVALID_ARGUMENT when it is no PNG.
absl::StatusOr<Image> ReadPng(const std::string& path);

}  // namespace halloc::png

#endif  // HALLOC_CLIENTS_PNG_PNG_H_
