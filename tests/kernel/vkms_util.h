// vkms for the in-guest tests (kms_test.cc, pipeline_test.cc).
#ifndef HALLOC_TESTS_KERNEL_VKMS_UTIL_H_
#define HALLOC_TESTS_KERNEL_VKMS_UTIL_H_

#include <gtest/gtest.h>

#include <optional>

#include "clients/compositor/kms.h"
#include "tests/kernel/guest_util.h"

namespace halloc_test {

// Opens vkms with `options` into `*display`. Where it is missing: a
// failure inside tools/kernel-test.sh (which builds vkms.ko from
// linux-source-6.1 and loads it), a skip saying why elsewhere. Callers check
// IsSkipped() / HasFatalFailure() after.
inline void OpenVkms(const halloc::compositor::DisplayOptions& options,
                     std::optional<halloc::compositor::KmsDisplay>* display) {
  display->reset();
  absl::StatusOr<halloc::compositor::KmsDisplay> opened =
      halloc::compositor::KmsDisplay::Open("vkms", options);
  if (opened.status().code() == absl::StatusCode::kNotFound) {
    if (!Env("HALLOC_KO").empty()) FAIL() << "vkms should be loaded: " << opened.status();
    GTEST_SKIP() << "no vkms DRM device (Debian's kernel has no CONFIG_DRM_VKMS; "
                    "tools/kernel-test.sh loads an out-of-tree vkms.ko): "
                 << opened.status();
  }
  ASSERT_TRUE(opened.ok()) << opened.status();
  display->emplace(*std::move(opened));
}

}  // namespace halloc_test

#endif  // HALLOC_TESTS_KERNEL_VKMS_UTIL_H_
