#include "clients/camera/pattern.h"

#include <drm_fourcc.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/camera/formats.h"

namespace halloc::camera {
namespace {

constexpr Rgb kBarColours[kBars] = {
    {255, 255, 255}, {255, 255, 0}, {0, 255, 255}, {0, 255, 0},
    {255, 0, 255},   {255, 0, 0},   {0, 0, 255},   {0, 0, 0},
};
constexpr Rgb kWhite = {255, 255, 255}, kBlack = {0, 0, 0};

// 3x5 digits, one 3-bit row each (bit 2 = left column).
constexpr uint8_t kFont[10][5] = {
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
    {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1},
    {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
};

uint32_t Modulus() {
  uint32_t m = 1;
  for (int i = 0; i < kCounterDigits; ++i) m *= 10;
  return m;
}

// The digit shown at position `d` (0 = leftmost) for `sequence`.
int DigitOf(uint32_t sequence, int d) {
  uint32_t v = sequence % Modulus();
  for (int i = kCounterDigits - 1; i > d; --i) v /= 10;
  return static_cast<int>(v % 10);
}

// Colour of a counter box pixel at box cell (cx, cy).
Rgb BoxColour(uint32_t cx, uint32_t cy, uint32_t sequence) {
  if (cy == 0 || cy >= 6 || cx == 0) return kBlack;
  const uint32_t d = (cx - 1) / 4, col = (cx - 1) % 4;
  if (col == 3 || d >= kCounterDigits) return kBlack;
  const uint8_t bits = kFont[DigitOf(sequence, static_cast<int>(d))][cy - 1];
  return (bits >> (2 - col)) & 1 ? kWhite : kBlack;
}

uint8_t Clamp(int v) { return static_cast<uint8_t>(std::clamp(v, 0, 255)); }
uint8_t Y(Rgb c) { return Clamp(((66 * c.r + 129 * c.g + 25 * c.b + 128) >> 8) + 16); }
uint8_t U(Rgb c) { return Clamp(((-38 * c.r - 74 * c.g + 112 * c.b + 128) >> 8) + 128); }
uint8_t V(Rgb c) { return Clamp(((112 * c.r - 94 * c.g - 18 * c.b + 128) >> 8) + 128); }
Rgb FromYuv(int y, int u, int v) {
  const int c = y - 16, d = u - 128, e = v - 128;
  return {Clamp((298 * c + 409 * e + 128) >> 8),
          Clamp((298 * c - 100 * d - 208 * e + 128) >> 8),
          Clamp((298 * c + 516 * d + 128) >> 8)};
}

absl::Status CheckLayout(const v1::BufferLayout& layout, size_t size) {
  if (!CanDraw(layout.format())) {
    return absl::UnimplementedError(absl::StrCat(
        "the synthetic pattern has no ", FourccString(layout.format()),
        " writer (XRGB8888, ARGB8888, YUYV, NV12)"));
  }
  const size_t planes = layout.format() == DRM_FORMAT_NV12 ? 2 : 1;
  if (static_cast<size_t>(layout.planes_size()) < planes ||
      layout.size() > size || layout.width() == 0 || layout.height() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "layout %ux%u of %u bytes with %d planes does not fit %u bytes",
        layout.width(), layout.height(), layout.size(), layout.planes_size(),
        size));
  }
  for (size_t i = 0; i < planes; ++i) {
    const v1::PlaneLayout& p = layout.planes(static_cast<int>(i));
    const uint64_t w = layout.width(), h = layout.height();
    const uint64_t rows = i == 0 ? h : (h + 1) / 2;
    const uint64_t row_bytes = layout.format() == DRM_FORMAT_NV12 ? (w + 1) / 2 * 2
                               : layout.format() == DRM_FORMAT_YUYV ? (w + 1) / 2 * 4
                                                                    : 4 * w;
    if (p.stride() < row_bytes || p.offset() > size ||
        (size - p.offset()) / p.stride() < rows) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "plane %d (offset %u, stride %u) does not hold %u rows of %u bytes in %u",
          i, p.offset(), p.stride(), rows, row_bytes, size));
    }
  }
  return absl::OkStatus();
}

// The colours of row y of frame `sequence`.
void RowColours(uint32_t width, uint32_t height, uint32_t y, uint32_t sequence,
                std::vector<Rgb>* row) {
  row->resize(width);
  for (uint32_t x = 0; x < width; ++x) {
    (*row)[x] = kBarColours[BarAt(x, width, sequence)];
  }
  if (!InCounterBox(kBoxX, y, width, height)) return;
  for (uint32_t x = kBoxX; x < kBoxX + kBoxWidth; ++x) {
    (*row)[x] = BoxColour((x - kBoxX) / kCell, (y - kBoxY) / kCell, sequence);
  }
}

}  // namespace

Rgb BarColour(int bar) { return kBarColours[((bar % kBars) + kBars) % kBars]; }

int BarAt(uint32_t x, uint32_t width, uint32_t sequence) {
  const uint64_t shifted =
      (uint64_t{x} + uint64_t{sequence} * kScrollPixels) % width;
  return static_cast<int>(shifted * kBars / width);
}

bool InCounterBox(uint32_t x, uint32_t y, uint32_t width, uint32_t height) {
  if (width < kBoxX + kBoxWidth || height < kBoxY + kBoxHeight) return false;
  return x >= kBoxX && x < kBoxX + kBoxWidth && y >= kBoxY &&
         y < kBoxY + kBoxHeight;
}

bool CanDraw(uint32_t f) {
  return f == DRM_FORMAT_XRGB8888 || f == DRM_FORMAT_ARGB8888 ||
         f == DRM_FORMAT_YUYV || f == DRM_FORMAT_NV12;
}

absl::Status Draw(const v1::BufferLayout& layout, uint8_t* data, size_t size,
                  uint32_t sequence) {
  if (absl::Status s = CheckLayout(layout, size); !s.ok()) return s;
  const uint32_t w = layout.width(), h = layout.height();
  const v1::PlaneLayout& p0 = layout.planes(0);
  const bool nv12 = layout.format() == DRM_FORMAT_NV12;
  std::vector<Rgb> row;
  for (uint32_t y = 0; y < h; ++y) {
    uint8_t* line = data + p0.offset() + y * p0.stride();
    if (y > 0 && !InCounterBox(kBoxX, y, w, h)) {
      // Rows outside the box are all row 0 (bars do not depend on y).
      memcpy(line, data + p0.offset(), p0.stride());
      if (nv12 && y % 2 == 0) {
        const v1::PlaneLayout& p1 = layout.planes(1);
        memcpy(data + p1.offset() + (y / 2) * p1.stride(), data + p1.offset(),
               p1.stride());
      }
      continue;
    }
    RowColours(w, h, y, sequence, &row);
    switch (layout.format()) {
      case DRM_FORMAT_XRGB8888:
      case DRM_FORMAT_ARGB8888:
        for (uint32_t x = 0; x < w; ++x) {
          line[4 * x] = row[x].b;
          line[4 * x + 1] = row[x].g;
          line[4 * x + 2] = row[x].r;
          line[4 * x + 3] = 0xff;
        }
        break;
      case DRM_FORMAT_YUYV:
        for (uint32_t x = 0; x < w; x += 2) {
          const Rgb second = x + 1 < w ? row[x + 1] : row[x];
          line[2 * x] = Y(row[x]);
          line[2 * x + 1] = U(row[x]);
          line[2 * x + 2] = Y(second);
          line[2 * x + 3] = V(row[x]);
        }
        break;
      case DRM_FORMAT_NV12: {
        for (uint32_t x = 0; x < w; ++x) line[x] = Y(row[x]);
        if (y % 2 != 0) break;
        const v1::PlaneLayout& p1 = layout.planes(1);
        uint8_t* uv = data + p1.offset() + (y / 2) * p1.stride();
        for (uint32_t x = 0; x < w; x += 2) {
          uv[x] = U(row[x]);
          uv[x + 1] = V(row[x]);
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Rgb> PixelAt(const v1::BufferLayout& layout, const uint8_t* data,
                            size_t size, uint32_t x, uint32_t y) {
  if (absl::Status s = CheckLayout(layout, size); !s.ok()) return s;
  if (x >= layout.width() || y >= layout.height()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pixel (%u, %u) outside %ux%u", x, y, layout.width(), layout.height()));
  }
  const v1::PlaneLayout& p0 = layout.planes(0);
  const uint8_t* line = data + p0.offset() + y * p0.stride();
  switch (layout.format()) {
    case DRM_FORMAT_YUYV: {
      const uint8_t* pair = line + 4 * (x / 2);
      return FromYuv(pair[(x % 2) * 2], pair[1], pair[3]);
    }
    case DRM_FORMAT_NV12: {
      const v1::PlaneLayout& p1 = layout.planes(1);
      const uint8_t* uv = data + p1.offset() + (y / 2) * p1.stride() + (x & ~1u);
      return FromYuv(line[x], uv[0], uv[1]);
    }
    default:
      return Rgb{line[4 * x + 2], line[4 * x + 1], line[4 * x]};
  }
}

absl::StatusOr<uint32_t> ReadCounter(const v1::BufferLayout& layout,
                                     const uint8_t* data, size_t size) {
  if (!InCounterBox(kBoxX, kBoxY, layout.width(), layout.height())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "a %ux%u frame is too small for the counter box", layout.width(),
        layout.height()));
  }
  uint32_t value = 0;
  for (int d = 0; d < kCounterDigits; ++d) {
    uint8_t glyph[5] = {};
    for (uint32_t cy = 1; cy <= 5; ++cy) {
      for (uint32_t col = 0; col < 3; ++col) {
        const uint32_t cx = 1 + 4 * d + col;
        absl::StatusOr<Rgb> c =
            PixelAt(layout, data, size, kBoxX + cx * kCell + kCell / 2,
                    kBoxY + cy * kCell + kCell / 2);
        if (!c.ok()) return c.status();
        if (c->r + c->g + c->b > 3 * 128) glyph[cy - 1] |= 1 << (2 - col);
      }
    }
    int digit = -1;
    for (int i = 0; i < 10 && digit < 0; ++i) {
      if (std::equal(glyph, glyph + 5, kFont[i])) digit = i;
    }
    if (digit < 0) {
      return absl::NotFoundError(
          absl::StrCat("counter digit ", d, " is not a digit"));
    }
    value = value * 10 + static_cast<uint32_t>(digit);
  }
  return value;
}

}  // namespace halloc::camera
