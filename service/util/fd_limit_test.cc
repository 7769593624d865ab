#include "service/util/fd_limit.h"

#include <sys/resource.h>

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(FdLimitTest, IsTheSoftLimitAndZeroWhenInfinite) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  EXPECT_EQ(FdLimit(), lim.rlim_cur == RLIM_INFINITY ? 0 : lim.rlim_cur);
  const rlimit lowered{lim.rlim_cur == RLIM_INFINITY ? 4096 : lim.rlim_cur - 1, lim.rlim_max};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  EXPECT_EQ(FdLimit(), lowered.rlim_cur);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
}

}  // namespace
}  // namespace halloc
