#include "clients/cpp/halloc/base/temp_dir_testing.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace halloc::testing {
namespace {

TEST(TempDirTest, IsMadeWithItsModeAndGoesWithItsContents) {
  std::string path;
  {
    TempDir dir("temp-dir-test", 0755);
    path = dir.path();
    EXPECT_EQ(path.rfind("/tmp/halloc-temp-dir-test-", 0), 0u) << path;
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0755u);  // not the umask's
    EXPECT_EQ(dir / "a", path + "/a");
    std::filesystem::create_directory(dir / "sub");
    std::ofstream(dir / "sub/file") << "x";
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << path;
}

TEST(TempDirTest, EachIsNew) {
  TempDir a("temp-dir-test");
  TempDir b("temp-dir-test");
  EXPECT_NE(a.path(), b.path());
  struct stat st;
  ASSERT_EQ(::stat(a.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

}  // namespace
}  // namespace halloc::testing
