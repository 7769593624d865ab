#include "service/util/random.h"

#include <string>

#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(RandomBytesTest, GivesTheLengthAskedAndNeverTheSameTwice) {
  const std::string a = RandomBytes(16), b = RandomBytes(16);
  EXPECT_EQ(a.size(), 16u);
  EXPECT_NE(a, b);
  EXPECT_NE(a, std::string(16, '\0'));
  EXPECT_EQ(RandomBytes(0), "");
}

}  // namespace
}  // namespace halloc
