#include "clients/png/png.h"

#include <png.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc::png {

// The simplified API (png_image) has no longjmp for us to handle: errors
// come back as a zero return with the message in image.message.
absl::Status WritePng(const std::string& path, const void* data, uint32_t width, uint32_t height,
                      size_t stride) {
  if (width == 0 || height == 0 || data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("WritePng ", path, ": empty image (", width, "x", height, ")"));
  }
  if (stride < size_t(width) * 4) {
    return absl::InvalidArgumentError(absl::StrCat("WritePng ", path, ": stride ", stride,
                                                   " is shorter than a row of ", width,
                                                   " XRGB8888 pixels"));
  }
  std::vector<uint8_t> rgb(size_t(width) * height * 3);
  const auto* base = static_cast<const uint8_t*>(data);
  for (uint32_t y = 0; y < height; ++y) {
    const uint8_t* row = base + size_t(y) * stride;
    uint8_t* out = &rgb[size_t(y) * width * 3];
    for (uint32_t x = 0; x < width; ++x) {
      uint32_t p;
      std::memcpy(&p, row + size_t(x) * 4, 4);
      out[3 * x + 0] = uint8_t(p >> 16);
      out[3 * x + 1] = uint8_t(p >> 8);
      out[3 * x + 2] = uint8_t(p);
    }
  }
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = PNG_FORMAT_RGB;
  errno = 0;
  if (!png_image_write_to_file(&image, path.c_str(), 0, rgb.data(), 0, nullptr)) {
    const int err = errno;
    absl::Status status =
        err != 0 ? ErrnoStatus(err, absl::StrCat("write ", path))
                 : absl::InternalError(absl::StrCat("write ", path, ": libpng: ", image.message));
    png_image_free(&image);
    return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<Image> ReadPng(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    absl::Status status =
        absl::InvalidArgumentError(absl::StrCat("read ", path, ": ", image.message));
    png_image_free(&image);
    return status;
  }
  image.format = PNG_FORMAT_BGRA;  // little-endian 0xAARRGGBB words
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.pixels.resize(size_t(image.width) * image.height);
  png_color black = {0, 0, 0};
  if (!png_image_finish_read(&image, &black, out.pixels.data(), 0, nullptr)) {
    absl::Status status =
        absl::InvalidArgumentError(absl::StrCat("read ", path, ": ", image.message));
    png_image_free(&image);
    return status;
  }
  for (uint32_t& p : out.pixels) p |= 0xff000000u;
  return out;
}

}  // namespace halloc::png
