// Reads a PNG file (e.g. a compositor's screenshot) as 8-bit RGBA pixels.
#ifndef HALLOC_CLIENTS_WAYLAND_PNG_H_
#define HALLOC_CLIENTS_WAYLAND_PNG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace halloc::wayland {

struct Rgba {
  uint8_t r, g, b, a;
  bool operator==(const Rgba& o) const {
    return r == o.r && g == o.g && b == o.b && a == o.a;
  }
};

struct RgbaImage {
  uint32_t width = 0;
  uint32_t height = 0;
  std::vector<Rgba> pixels;  // row-major, width * height
  Rgba at(uint32_t x, uint32_t y) const { return pixels[y * width + x]; }
};

// NOT_FOUND if `path` does not exist, INVALID_ARGUMENT if it is not a PNG
// libpng can read (its message says why).
absl::StatusOr<RgbaImage> ReadPng(const std::string& path);

}  // namespace halloc::wayland

#endif  // HALLOC_CLIENTS_WAYLAND_PNG_H_
