// Test pictures for XRGB8888 frames: vertical colour bars and solid colours,
// written through a CPU mapping of a halloc frame, and the colour a bar
// should have at a column (what a capture of the screen is checked against).
#ifndef HALLOC_CLIENTS_COMPOSITOR_PATTERN_H_
#define HALLOC_CLIENTS_COMPOSITOR_PATTERN_H_

#include <cstdint>

#include "absl/status/status.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::compositor {

// The eight bars, left to right: white, yellow, cyan, green, magenta, red,
// blue, black (0xffRRGGBB).
inline constexpr uint32_t kBars[8] = {0xffffffff, 0xffffff00, 0xff00ffff, 0xff00ff00,
                                      0xffff00ff, 0xffff0000, 0xff0000ff, 0xff000000};
inline constexpr int kBarCount = 8;

// The bar colour at column `x` of a `width`-pixel-wide picture.
inline uint32_t BarAt(uint32_t x, uint32_t width) { return kBars[uint64_t(x) * kBarCount / width]; }

// Fills an XRGB8888 frame (mapped read-write) with the bars, or with one
// colour. INVALID_ARGUMENT for another format or a blob.
absl::Status FillBars(const halloc::Buffer& frame);
absl::Status FillSolid(const halloc::Buffer& frame, uint32_t colour);

}  // namespace halloc::compositor

#endif  // HALLOC_CLIENTS_COMPOSITOR_PATTERN_H_
