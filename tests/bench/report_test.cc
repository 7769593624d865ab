// Row judgement (ratio, met) and the percentile summary the benchmarks share.
#include "tests/bench/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tests/bench/bench_util.h"

namespace halloc::bench {
namespace {

TEST(ReportTest, CpuChangePctCountsCallsDuringOrBeforeWhichTheCpuChanged) {
  EXPECT_DOUBLE_EQ(CpuChangePct({{0, 0}, {0, 0}, {0, 0}, {0, 0}}), 0);
  EXPECT_DOUBLE_EQ(CpuChangePct({{0, 1}, {1, 1}, {1, 1}, {1, 1}}), 25);   // during
  EXPECT_DOUBLE_EQ(CpuChangePct({{0, 0}, {1, 1}, {1, 1}, {1, 1}}), 25);   // between
  EXPECT_DOUBLE_EQ(CpuChangePct({{0, 1}, {0, 1}, {0, 1}, {0, 1}}), 100);  // both
  // An unknown CPU compares with nothing.
  EXPECT_DOUBLE_EQ(CpuChangePct({{0, -1}, {1, 1}, {-1, 0}, {0, 0}}), 0);
  EXPECT_TRUE(std::isnan(CpuChangePct({})));
}

TEST(ReportTest, FloorRowHasNoRatioAndNoVerdict) {
  const Row r = FloorRow("floor.x", 10, "us");
  EXPECT_TRUE(std::isnan(r.ratio()));
  EXPECT_FALSE(r.met().has_value());
}

TEST(ReportTest, LowerIsBetterTarget) {
  EXPECT_DOUBLE_EQ(Compare("a", 9, "us", "f", 10, 1.0).ratio(), 0.9);
  EXPECT_TRUE(*Compare("a", 10, "us", "f", 10, 1.0).met());
  EXPECT_FALSE(*Compare("a", 11, "us", "f", 10, 1.0).met());
  EXPECT_FALSE(Compare("a", 11, "us", "f", 10).met().has_value());
}

TEST(ReportTest, HigherIsBetterTarget) {
  EXPECT_TRUE(*Compare("a", 50, "us", "f", 10, 5.0, true).met());
  EXPECT_FALSE(*Compare("a", 49, "us", "f", 10, 5.0, true).met());
}

TEST(ReportTest, MissingValueMissesItsTarget) {
  EXPECT_FALSE(*Compare("a", kNaN, "us", "f", 10, 1.0).met());
  EXPECT_FALSE(*Compare("a", 5, "us", "f", kNaN, 1.0, true).met());
}

TEST(ReportTest, JsonHasOneObjectPerRowAndNullForNaN) {
  const std::string path = ::testing::TempDir() + "/rows.json";
  Row skipped = Compare("b", kNaN, "us", "f", 1, 1.0);
  skipped.note = "no \"device\"";
  ASSERT_TRUE(WriteRowsJson({FloorRow("f", 1, "us"), skipped}, path).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string j = text.str();
  EXPECT_NE(j.find("\"name\": \"f\", \"value\": 1,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"value\": null"), std::string::npos) << j;
  EXPECT_NE(j.find("\"met\": false, \"note\": \"no \\\"device\\\"\""),
            std::string::npos) << j;
}

TEST(SummaryTest, NearestRankIgnoringNaN) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  v.push_back(kNaN);
  const Summary s = Summarize(v);
  EXPECT_EQ(s.n, 100u);
  EXPECT_EQ(s.p50, 50);
  EXPECT_EQ(s.p99, 99);
  EXPECT_EQ(s.max, 100);
  EXPECT_TRUE(std::isnan(Summarize({}).p50));
}

}  // namespace
}  // namespace halloc::bench
