#include "service/util/id_map.h"

#include <unistd.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

// The kernel's own layout ("%10u %10u %10u\n").
std::string Line(uint32_t inside, uint32_t outside, uint32_t count) {
  return absl::StrFormat("%10u %10u %10u\n", inside, outside, count);
}

TEST(IdMapTest, MapsEachExtentsUidsAndNoOthers) {
  // A container's root and 1,023 uids from one block, and uid 2000 from
  // another (LXD's raw.idmap, say).
  absl::StatusOr<IdMap> map =
      IdMap::Parse(Line(0, 301024, 1) + Line(1, 500001, 1023) + Line(2000, 1000, 1));
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->extents().size(), 3u);
  EXPECT_EQ(map->ToOutside(0), 301024u);
  EXPECT_EQ(map->ToOutside(1), 500001u);
  EXPECT_EQ(map->ToOutside(1023), 501023u);
  EXPECT_EQ(map->ToOutside(1024), std::nullopt);
  EXPECT_EQ(map->ToOutside(2000), 1000u);
  EXPECT_EQ(map->ToOutside(1999), std::nullopt);
  EXPECT_EQ(map->ToOutside(2001), std::nullopt);
  // The whole range (the initial namespace's own map, as a child's reads
  // it), up to the last uid.
  map = IdMap::Parse(Line(0, 0, 4294967295u));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->ToOutside(0), 0u);
  EXPECT_EQ(map->ToOutside(4294967294u), 4294967294u);
  // Blanks as a hand-written map has them.
  map = IdMap::Parse("0 100000 65536");
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->ToOutside(65535), 165535u);
}

TEST(IdMapTest, AMapNotYetWrittenMapsNothing) {
  for (const char* text : {"", "\n", "  \n"}) {
    absl::StatusOr<IdMap> map = IdMap::Parse(text);
    ASSERT_TRUE(map.ok()) << map.status();
    EXPECT_TRUE(map->extents().empty());
    EXPECT_EQ(map->ToOutside(0), std::nullopt);
  }
}

// What the reader's namespace cannot name (the kernel shows -1) maps to
// nothing, not to uid 4294967295 nor to uids past it.
TEST(IdMapTest, OutsideUidsTheReaderCannotNameMapToNothing) {
  absl::StatusOr<IdMap> map = IdMap::Parse(Line(0, IdMap::kUnnamed, 65536) + Line(70000, 7, 1));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->ToOutside(0), std::nullopt);
  EXPECT_EQ(map->ToOutside(5), std::nullopt);
  EXPECT_EQ(map->ToOutside(70000), 7u);
  // An extent the reader's namespace maps only in part (its first uid
  // near the last): nothing past the last uid.
  map = IdMap::Parse(Line(0, 4294967290u, 10));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->ToOutside(0), 4294967290u);
  EXPECT_EQ(map->ToOutside(4), 4294967294u);
  EXPECT_EQ(map->ToOutside(5), std::nullopt);
}

TEST(IdMapTest, RefusesWhatTheKernelWouldNotShow) {
  for (const std::string& text : std::vector<std::string>{
           "0 100000\n",                 // two fields
           "0 100000 10 4\n",            // four
           "0 100000 0\n",               // no uids
           "-0 100000 10\n",             // a sign
           "+0 100000 10\n",             //
           "0 0x100 10\n",               // not decimal
           "0 100000 10x\n",             //
           "0 4294967296 1\n",           // past 32 bits
           "0 99999999999 1\n",          //
           "4294967295 0 2\n",           // inside runs past the last uid
           Line(0, 1, 1) + "garbage\n",  // any line
           "0\t100000\t10\n",            // not the kernel's blanks
       }) {
    absl::StatusOr<IdMap> map = IdMap::Parse(text);
    EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << text << "\" gave " << (map.ok() ? "a map" : map.status().ToString());
  }
  std::string many;
  for (uint32_t i = 0; i < 340; ++i) many += Line(i * 10, 100000 + i * 10, 10);
  EXPECT_TRUE(IdMap::Parse(many).ok()) << "the kernel's limit, 340 extents";
  many += Line(3400, 200000, 1);
  EXPECT_EQ(IdMap::Parse(many).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IdMapTest, ReadsAProcesssMap) {
  absl::StatusOr<IdMap> map = ReadUidMap(::getpid());
  ASSERT_TRUE(map.ok()) << map.status();
  // Its own namespace's map, as a process of it reads it: its own uid
  // maps to something (itself, in the initial namespace).
  EXPECT_TRUE(map->ToOutside(::getuid()).has_value());
  // No such process (pid_max is at most 2^22).
  EXPECT_EQ(ReadUidMap(1 << 23).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace halloc
