// An in-process hallocd for the in-guest tests that run the daemon on the
// module (daemon_test.cc, vivid_test.cc, stock_daemon_test.cc).
#ifndef HALLOC_TESTS_KERNEL_DAEMON_UTIL_H_
#define HALLOC_TESTS_KERNEL_DAEMON_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "clients/testing/test_daemon.h"

namespace halloc_test {

// Starts hallocd with `backend` and, unless `policy` is empty, that policy
// (text format; written to a temporary file, removed once the daemon has
// read it). `dma_heap`: the dmaheap backend's heap (--dma_heap).
inline absl::StatusOr<std::unique_ptr<halloc::testing::TestDaemon>> StartDaemon(
    const std::string& backend, const std::string& policy = "",
    const std::string& dma_heap = "") {
  halloc::DaemonOptions options = halloc::testing::TestDaemon::DefaultOptions();
  options.backend = backend;
  options.dma_heap = dma_heap;
  if (policy.empty()) return halloc::testing::TestDaemon::Start(options);
  char path[] = "/tmp/halloc-policy-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return absl::InternalError(absl::StrCat("mkstemp: ", strerror(errno)));
  const bool written =
      write(fd, policy.data(), policy.size()) == static_cast<ssize_t>(policy.size());
  close(fd);
  if (!written) {
    unlink(path);
    return absl::InternalError(absl::StrCat("write ", path));
  }
  options.policy_file = path;
  auto daemon = halloc::testing::TestDaemon::Start(options);
  unlink(path);
  return daemon;
}

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_DAEMON_UTIL_H_
