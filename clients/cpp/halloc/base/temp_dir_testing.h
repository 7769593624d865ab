// A test's own directory, removed with everything in it when its owner goes.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_TEMP_DIR_TESTING_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_TEMP_DIR_TESTING_H_

#include <sys/types.h>

#include <string>

#include "absl/strings/string_view.h"

namespace halloc::testing {

// "/tmp/halloc-<what>-XXXXXX", made with `mode`. Under /tmp rather than
// Bazel's TEST_TMPDIR: the Unix sockets tests bind in it must fit sun_path
// (108 bytes). A test binary that cannot make one stops at once, saying why.
class TempDir {
 public:
  explicit TempDir(absl::string_view what, mode_t mode = 0700);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // `name` inside it.
  std::string operator/(absl::string_view name) const;

 private:
  std::string path_;
};

}  // namespace halloc::testing

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_TEMP_DIR_TESTING_H_
