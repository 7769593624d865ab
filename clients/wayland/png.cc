#include "clients/wayland/png.h"

#include <errno.h>
#include <png.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"

namespace halloc::wayland {

absl::StatusOr<RgbaImage> ReadPng(const std::string& path) {
  if (access(path.c_str(), R_OK) != 0) {
    return ErrnoStatus(errno, absl::StrCat("reading ", path));
  }
  png_image image;
  memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a PNG libpng reads: ", image.message));
  }
  image.format = PNG_FORMAT_RGBA;
  RgbaImage out;
  out.width = image.width;
  out.height = image.height;
  out.pixels.resize(static_cast<size_t>(image.width) * image.height);
  if (!png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    return absl::InvalidArgumentError(
        absl::StrCat("decoding ", path, ": ", message));
  }
  return out;
}

}  // namespace halloc::wayland
