#include "clients/cpp/halloc/base/temp_dir_testing.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"

namespace halloc::testing {

TempDir::TempDir(absl::string_view what, mode_t mode) {
  std::string tmpl = absl::StrCat("/tmp/halloc-", what, "-XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr || ::chmod(buf.data(), mode) != 0) {
    std::fprintf(stderr, "TempDir %s: %s\n", buf.data(), std::strerror(errno));
    std::abort();
  }
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ignored;  // a test may have left something it cannot remove
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::operator/(absl::string_view name) const {
  return absl::StrCat(path_, "/", name);
}

}  // namespace halloc::testing
