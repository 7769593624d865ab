// The command-line parser (flags.h) and argument parsing (args.h), without a
// daemon: what is a flag, what is a word, and which inputs are usage errors.
#include "clients/cli/args.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "clients/cli/flags.h"
#include "gtest/gtest.h"

namespace halloc::cli {
namespace {

TEST(ParseArgsTest, FlagsAnywhereWordsInOrder) {
  FlagScope scope;
  absl::StatusOr<std::vector<std::string>> words = ParseArgs(
      {"--size=4096", "describe", "--map-check", "7", "--count", "3", "--nojson", "-1",
       "--", "--all"});
  ASSERT_TRUE(words.ok()) << words.status();
  EXPECT_EQ(*words, (std::vector<std::string>{"describe", "7", "-1", "--all"}));
  const Options o = Options::FromFlags();
  EXPECT_EQ(o.size, 4096u);
  EXPECT_TRUE(o.map_check);
  EXPECT_EQ(o.count, 3u);
  EXPECT_FALSE(o.json);
  EXPECT_FALSE(o.all);  // after --, a word
}

TEST(ParseArgsTest, BadFlagsAreUsageErrors) {
  FlagScope scope;
  const std::vector<std::vector<std::string>> cases = {
      {"--no_such_flag"}, {"--size"}, {"--size=abc"}, {"--json=maybe"},
      {"--nosize"},       {"--interval=soon"}, {"--hold"}};
  constexpr absl::string_view kRefused[] = {"hold"};
  for (const auto& tokens : cases) {
    SCOPED_TRACE(tokens[0]);
    absl::StatusOr<std::vector<std::string>> words = ParseArgs(tokens, kRefused);
    ASSERT_FALSE(words.ok());
    EXPECT_TRUE(IsUsageError(words.status())) << words.status();
  }
}

TEST(ParseArgsTest, FlagScopeRestoresTheValuesItFound) {
  ASSERT_TRUE(ParseArgs({"--name=outer"}).ok());
  {
    FlagScope scope;
    ASSERT_TRUE(ParseArgs({"--name=inner", "--size=1"}).ok());
    EXPECT_EQ(Options::FromFlags().name, "inner");
  }
  EXPECT_EQ(Options::FromFlags().name, "outer");
  EXPECT_EQ(Options::FromFlags().size, 0u);
  ASSERT_TRUE(ParseArgs({"--name="}).ok());
}

TEST(ArgsTest, Int32AcceptsDecimalAndHexWithinRange) {
  EXPECT_EQ(*ParseInt32("0x10c10000", "v"), 0x10c10000);
  EXPECT_EQ(*ParseInt32("-5", "v"), -5);
  EXPECT_EQ(*ParseInt32("2147483647", "v"), 2147483647);
  for (const char* bad : {"", "-", "abc", "0x80000000", "2147483648", "--1", "+1", "1.5"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<int32_t> v = ParseInt32(bad, "v");
    ASSERT_FALSE(v.ok());
    EXPECT_TRUE(IsUsageError(v.status()));
  }
}

TEST(ArgsTest, MetadataFieldsParseTheirValues) {
  absl::StatusOr<MetadataValue> ds = ParseMetadata("dataspace", {"0x10c10000"});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->type, v1::METADATA_DATASPACE);
  EXPECT_EQ(ds->value.dataspace(), 0x10c10000);
  absl::StatusOr<MetadataValue> bm = ParseMetadata("blend-mode", {"premultiplied"});
  ASSERT_TRUE(bm.ok()) << bm.status();
  EXPECT_EQ(bm->value.blend_mode(), v1::BLEND_MODE_PREMULTIPLIED);
  absl::StatusOr<MetadataValue> crop = ParseMetadata("crop", {"0,0,64,64", "1,2,3,4"});
  ASSERT_TRUE(crop.ok()) << crop.status();
  ASSERT_EQ(crop->value.crop_size(), 2);
  EXPECT_EQ(crop->value.crop(1).bottom(), 4);

  const std::vector<std::pair<std::string, std::vector<std::string>>> bad = {
      {"dataspace", {}},          {"dataspace", {"1", "2"}},   {"blend-mode", {"invalid"}},
      {"blend-mode", {"sideways"}}, {"crop", {"1,2,3"}},       {"crop", {"a,b,c,d"}},
      {"shininess", {"1"}}};
  for (const auto& [field, values] : bad) {
    SCOPED_TRACE(field);
    absl::StatusOr<MetadataValue> m = ParseMetadata(field, values);
    ASSERT_FALSE(m.ok());
    EXPECT_TRUE(IsUsageError(m.status())) << m.status();
  }
}

TEST(ArgsTest, AccessAndDescriptor) {
  EXPECT_EQ(*ParseAccess(""), v1::CPU_ACCESS_UNSPECIFIED);
  EXPECT_EQ(*ParseAccess("read-write"), v1::CPU_ACCESS_READ_WRITE);
  EXPECT_TRUE(IsUsageError(ParseAccess("rw").status()));

  Options o;
  EXPECT_TRUE(IsUsageError(DescriptorFromOptions(o).status()));  // none given
  o.size = 4096;
  o.format = "NV12";
  EXPECT_TRUE(IsUsageError(DescriptorFromOptions(o).status()));  // both
  o.size = 0;
  o.width = 64;
  o.height = 32;
  o.usage = "camera_output";
  absl::StatusOr<v1::BufferDescriptor> d = DescriptorFromOptions(o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->image().width(), 64u);
  EXPECT_NE(d->usage(), 0u);
  o.format = "NOPE";
  EXPECT_TRUE(IsUsageError(DescriptorFromOptions(o).status()));
}

}  // namespace
}  // namespace halloc::cli
