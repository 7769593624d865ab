// The synthetic camera's picture: eight colour bars (white, yellow, cyan,
// green, magenta, red, blue, black, like vivid's) that scroll left by
// kScrollPixels per frame, with the frame counter drawn in as eight
// decimal digits (a 3x5 cell font, white on black) in a box at the top
// left. Drawn by the CPU into XRGB8888, ARGB8888, YUYV or NV12 (BT.601
// limited range for YUV) as described by a halloc BufferLayout.
//
// ReadCounter and PixelAt read a frame back (tests, `halloc-camera
// --check`), so a consumer can tell the picture moved and the counter
// advanced without trusting the producer.
#ifndef HALLOC_CLIENTS_CAMERA_PATTERN_H_
#define HALLOC_CLIENTS_CAMERA_PATTERN_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "halloc/v1/types.pb.h"

namespace halloc::camera {

struct Rgb {
  uint8_t r, g, b;
};

inline constexpr int kBars = 8;
inline constexpr uint32_t kScrollPixels = 4;
// The counter box: at (kBoxX, kBoxY), kCounterDigits digits, each 3x5
// cells of kCell pixels with one cell between digits and a one-cell border.
inline constexpr uint32_t kBoxX = 8, kBoxY = 8, kCell = 4;
inline constexpr int kCounterDigits = 8;
inline constexpr uint32_t kBoxWidth = (kCounterDigits * 4 + 1) * kCell;
inline constexpr uint32_t kBoxHeight = 7 * kCell;

// Bar i's colour (0 = white ... 7 = black).
Rgb BarColour(int bar);
// The bar under column x of frame `sequence` in a `width`-pixel image.
int BarAt(uint32_t x, uint32_t width, uint32_t sequence);
// Whether (x, y) lies in the counter box of a `width`x`height` image (the
// box is only drawn where it fits whole).
bool InCounterBox(uint32_t x, uint32_t y, uint32_t width, uint32_t height);

// Whether Draw supports `drm_fourcc`.
bool CanDraw(uint32_t drm_fourcc);

// Draws frame `sequence` into `data` (`size` bytes laid out as `layout`).
// INVALID_ARGUMENT if the layout does not fit in `size`, UNIMPLEMENTED for
// a format CanDraw refuses.
absl::Status Draw(const v1::BufferLayout& layout, uint8_t* data, size_t size,
                  uint32_t sequence);

// The colour of pixel (x, y) (YUV converted back to RGB, so within a few
// levels of what was drawn).
absl::StatusOr<Rgb> PixelAt(const v1::BufferLayout& layout, const uint8_t* data,
                            size_t size, uint32_t x, uint32_t y);

// The counter drawn into a frame (modulo 10^kCounterDigits). NOT_FOUND if
// the box does not hold digits, FAILED_PRECONDITION if the image is too
// small to hold the box.
absl::StatusOr<uint32_t> ReadCounter(const v1::BufferLayout& layout,
                                     const uint8_t* data, size_t size);

}  // namespace halloc::camera

#endif  // HALLOC_CLIENTS_CAMERA_PATTERN_H_
