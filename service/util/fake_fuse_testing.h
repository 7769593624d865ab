// Tests' FUSE file system: a server in this process that says root owns
// everything, as a user's FUSE server (mounted with allow_other) may say of
// its own files. Its root is a directory (0755) holding directory "d"
// (0755) and file "f" (0644), all root's. Needs root and /dev/fuse.
#ifndef HALLOC_SERVICE_UTIL_FAKE_FUSE_TESTING_H_
#define HALLOC_SERVICE_UTIL_FAKE_FUSE_TESTING_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::testing {

class FakeFuse {
 public:
  // Mounts it on the directory `at` and serves it on a thread until
  // destroyed. FAILED_PRECONDITION (with why) where this machine cannot
  // (no /dev/fuse, not root, mount refused).
  static absl::StatusOr<std::unique_ptr<FakeFuse>> Mount(const std::string& at);
  ~FakeFuse();  // unmounts (lazily) and joins its thread

  FakeFuse(const FakeFuse&) = delete;
  FakeFuse& operator=(const FakeFuse&) = delete;

 private:
  FakeFuse(std::string at, UniqueFd dev) : at_(std::move(at)), dev_(std::move(dev)) {}
  void Serve();

  const std::string at_;
  UniqueFd dev_;
  std::thread server_;
};

}  // namespace halloc::testing

#endif  // HALLOC_SERVICE_UTIL_FAKE_FUSE_TESTING_H_
