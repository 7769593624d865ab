// The parsing on any kernel; a real dma-buf's count is checked in the guest
// (tests/kernel/last_reference_guest_test.cc).
#include "service/backend/dmabuf_refs.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(DmaBufRefsTest, ReadsTheCountOfADmaBufsFdinfo) {
  // As 6.1's dma_buf_show_fdinfo prints it, after the generic lines.
  EXPECT_EQ(FdinfoCount("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1061\n"
                        "size:\t4096\ncount:\t3\nexp_name:\thalloc-system\n"
                        "name:\thalloc:camera\n"),
            3u);
  EXPECT_EQ(FdinfoCount("size:\t4096\ncount:\t1\n"), 1u);
  EXPECT_FALSE(FdinfoCount("pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t5\n").has_value());
  EXPECT_FALSE(FdinfoCount("count:\tmany\n").has_value());
  EXPECT_FALSE(FdinfoCount("").has_value());
}

TEST(DmaBufRefsTest, AFileWithoutACountCannotBeToldAbout) {
  UniqueFd memfd(::memfd_create("dmabuf_refs_test", MFD_CLOEXEC));
  ASSERT_TRUE(memfd);
  EXPECT_EQ(DmaBufReferences(memfd.get()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(DmaBufIsLastReference(memfd.get()), -ENODATA);
  EXPECT_EQ(DmaBufIsLastReference(-1), -ENOENT);
}

}  // namespace
}  // namespace halloc
