#include "service/util/subordinate_uids.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

// Where `uid`'s slice starts, or -1 outside every range.
int64_t SliceStart(const SubordinateUids& s, uid_t uid) {
  const std::optional<SubordinateUids::Slice> slice = s.SliceOf(uid);
  return slice ? int64_t{slice->first} : -1;
}

TEST(SubordinateUidsTest, ParsesWhatNewuidmapReadsAndSkipsTheRest) {
  const SubordinateUids s = SubordinateUids::Parse(
      "# comment\n"
      "alice:100000:65536\n"
      "\n"
      "  1001:165536:65536  \n"  // an owner given as a uid
      "bad line\n"
      "carol:x:5\n"
      "dave:300000:0\n"  // no uids
      "eve:400000:-1\n"
      ":500000:10\n"
      "root:4294967200:1000\n");  // past the last uid: cut there
  EXPECT_EQ(s.size(), 3u);
  std::optional<SubordinateUids::Slice> a = s.SliceOf(100000);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->range->owner, "alice");
  EXPECT_EQ(a->first, 100000u);
  EXPECT_EQ(a->count, 65536u);
  EXPECT_EQ(SliceStart(s, 165535), 100000);
  std::optional<SubordinateUids::Slice> b = s.SliceOf(165536);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->range->owner, "1001");
  EXPECT_EQ(SliceStart(s, 99999), -1);
  EXPECT_EQ(SliceStart(s, 231072), -1);  // one past 1001's
  EXPECT_EQ(SliceStart(s, 300000), -1);
  EXPECT_EQ(SliceStart(s, 500000), -1);
  std::optional<SubordinateUids::Slice> top = s.SliceOf(4294967295u);
  ASSERT_TRUE(top.has_value());
  EXPECT_EQ(top->range->owner, "root");
  EXPECT_EQ(top->count, 96u);
}

// Numbers as shadow-utils reads them: 0x hex and 0 octal too, never a
// sign; fields after the third are ignored.
TEST(SubordinateUidsTest, ReadsNumbersAsShadowUtilsDoes) {
  const SubordinateUids s = SubordinateUids::Parse(
      "hex:0x30d40:0x10000\n"   // 200000, 65536
      "oct:02000000:010\n"      // 524288, 8
      "extra:300000:10:more\n"  // extra field
      "neg:-5:10\n"
      "plus:+400000:10\n"
      "space:400000: 10\n"
      "big:500000:99999999999999999999999\n");
  EXPECT_EQ(s.size(), 3u);
  ASSERT_TRUE(s.SliceOf(200000).has_value());
  EXPECT_EQ(s.SliceOf(200000)->range->owner, "hex");
  EXPECT_EQ(s.SliceOf(265535)->range->owner, "hex");
  EXPECT_EQ(s.SliceOf(524295)->range->owner, "oct");
  EXPECT_EQ(SliceStart(s, 524296), -1);
  EXPECT_EQ(SliceStart(s, 2000000), -1) << "02000000 read as decimal";
  EXPECT_EQ(s.SliceOf(300009)->range->owner, "extra");
  EXPECT_EQ(SliceStart(s, 400000), -1);
  EXPECT_EQ(SliceStart(s, 500000), -1);
}

// A long range that starts early is found past shorter ones that start
// later; a uid past every range's reach is in none.
TEST(SubordinateUidsTest, FindsALongRangeBehindShorterOnes) {
  const SubordinateUids s = SubordinateUids::Parse("a:100:1000\nb:200:10\nc:300:10\n");
  ASSERT_TRUE(s.SliceOf(500).has_value());
  EXPECT_EQ(s.SliceOf(500)->range->owner, "a");
  EXPECT_EQ(s.SliceOf(205)->range->owner, "b");
  EXPECT_EQ(SliceStart(s, 1100), -1);
  EXPECT_EQ(SliceStart(s, 99), -1);
}

// A range larger than a slice (a container manager's) is keyed a slice at
// a time from its first uid; its last slice may be short.
TEST(SubordinateUidsTest, LargeRangesAreSlicedFromTheirFirstUid) {
  const SubordinateUids s = SubordinateUids::Parse("root:1000000:200000\n");
  EXPECT_EQ(SliceStart(s, 1000000), 1000000);
  EXPECT_EQ(SliceStart(s, 1065535), 1000000);
  EXPECT_EQ(SliceStart(s, 1065536), 1065536);
  std::optional<SubordinateUids::Slice> last = s.SliceOf(1199999);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->first, 1000000u + 3 * 65536u);
  EXPECT_EQ(last->count, 200000u - 3 * 65536u);
  EXPECT_EQ(SliceStart(s, 1200000), -1);
}

// Overlapping ranges: the nearest start that holds the uid; a range
// nested in a longer one does not hide the longer one past its end.
TEST(SubordinateUidsTest, OverlappingRangesAnswerByTheNearestStartThatHolds) {
  const SubordinateUids s = SubordinateUids::Parse(
      "outer:100000:100000\n"
      "inner:120000:10\n");
  EXPECT_EQ(s.SliceOf(120005)->range->owner, "inner");
  EXPECT_EQ(s.SliceOf(120010)->range->owner, "outer");
  EXPECT_EQ(s.SliceOf(100000)->range->owner, "outer");
}

class SubordinateUidsFileTest : public ::testing::Test {
 protected:
  void Write(const std::string& text) {
    // A new file renamed over the old, as usermod writes it.
    const std::string tmp = path_ + ".new";
    std::ofstream(tmp) << text;
    ASSERT_EQ(::chmod(tmp.c_str(), 0644), 0);  // whatever the umask: only its owner writes
    ASSERT_EQ(::rename(tmp.c_str(), path_.c_str()), 0);
  }

  testing::TempDir dir_{"subuid-test", 0755};
  const std::string path_ = dir_ / "subuid";
};

TEST_F(SubordinateUidsFileTest, ReadsAgainWhenTheFileChangesLookingAtMostOnceARecheck) {
  ASSERT_NO_FATAL_FAILURE(Write("alice:100000:65536\n"));
  SubordinateUidsFile file(path_, absl::Seconds(1));
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  EXPECT_EQ(file.At(t0).size(), 1u);
  ASSERT_NO_FATAL_FAILURE(Write("alice:100000:65536\nbob:165536:65536\n"));
  // Within the recheck: not looked at again.
  EXPECT_EQ(file.At(t0 + absl::Milliseconds(500)).size(), 1u);
  EXPECT_EQ(file.At(t0 + absl::Seconds(1)).size(), 2u);
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  EXPECT_EQ(file.At(t0 + absl::Seconds(2)).size(), 0u);
  ASSERT_NO_FATAL_FAILURE(Write("carol:300000:65536\n"));
  const SubordinateUids& now = file.At(t0 + absl::Seconds(3));
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now.SliceOf(300001)->range->owner, "carol");
}

TEST_F(SubordinateUidsFileTest, AFileOthersMayChangeGrantsNothing) {
  ASSERT_NO_FATAL_FAILURE(Write("alice:100000:65536\n"));
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  SubordinateUidsFile file(path_);
  const absl::Time t0 = absl::UnixEpoch() + absl::Hours(1);
  EXPECT_EQ(file.At(t0).size(), 0u);
  ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);  // a mode change is a change
  EXPECT_EQ(file.At(t0 + absl::Seconds(1)).size(), 1u);
  if (::geteuid() == 0 && ::chown(path_.c_str(), 65534, 65534) == 0) {
    EXPECT_EQ(file.At(t0 + absl::Seconds(2)).size(), 0u) << "a file of uid 65534's";
  }
}

// Past the first MiB nothing is read, and a line the cut falls in is not
// taken for a shorter one.
TEST_F(SubordinateUidsFileTest, ALargeFileIsCutAtALine) {
  std::string text;
  for (uint64_t i = 0; text.size() <= (1u << 20) + 100; ++i) {
    text += absl::StrCat("u", i, ":", 100000 + i * 65536, ":65536\n");
  }
  ASSERT_NO_FATAL_FAILURE(Write(text));
  SubordinateUidsFile file(path_);
  const SubordinateUids& s = file.At(absl::UnixEpoch());
  ASSERT_GT(s.size(), 1000u);
  const size_t whole = text.substr(0, 1u << 20).rfind('\n') + 1;
  EXPECT_EQ(s.size(), static_cast<size_t>(std::count(text.begin(), text.begin() + whole, '\n')));
  for (uint64_t i = 0; i < s.size(); ++i) {
    const std::optional<SubordinateUids::Slice> slice = s.SliceOf(100000 + i * 65536);
    ASSERT_TRUE(slice.has_value()) << i;
    EXPECT_EQ(slice->count, 65536u) << i;
  }
}

TEST_F(SubordinateUidsFileTest, NoFileNoRanges) {
  SubordinateUidsFile file(dir_ / "none");
  EXPECT_EQ(file.At(absl::UnixEpoch()).size(), 0u);
  // Nor does a directory or a FIFO (never waited on) at the path.
  ASSERT_EQ(::mkdir(path_.c_str(), 0755), 0);
  EXPECT_EQ(SubordinateUidsFile(path_).At(absl::UnixEpoch()).size(), 0u);
  ASSERT_EQ(::rmdir(path_.c_str()), 0);
  ASSERT_EQ(::mkfifo(path_.c_str(), 0644), 0);
  EXPECT_EQ(SubordinateUidsFile(path_).At(absl::UnixEpoch()).size(), 0u);
}

}  // namespace
}  // namespace halloc
