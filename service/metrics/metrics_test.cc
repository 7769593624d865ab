#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/metrics/histogram.h"
#include "service/metrics/prometheus.h"

namespace halloc {
namespace {

TEST(LatencyHistogramTest, EachRecordLandsInTheFirstBucketAtOrAboveIt) {
  LatencyHistogram h;
  h.Record(absl::Microseconds(10));   // ≤ 25 µs
  h.Record(absl::Microseconds(25));   // ≤ 25 µs (bounds are inclusive)
  h.Record(absl::Microseconds(26));   // ≤ 50 µs
  h.Record(absl::Milliseconds(3));    // ≤ 5 ms
  h.Record(absl::Seconds(2));         // above every bound
  const v1::Histogram r = h.Read();
  ASSERT_EQ(r.upper_bounds_size(), 12);
  ASSERT_EQ(r.counts_size(), 13);
  EXPECT_EQ(r.counts(0), 2u);
  EXPECT_EQ(r.counts(1), 1u);
  EXPECT_EQ(r.counts(7), 1u);  // (2.5 ms, 5 ms]
  EXPECT_EQ(r.counts(12), 1u);
  EXPECT_EQ(r.count(), 5u);
  EXPECT_NEAR(r.sum(), 2.003061, 1e-9);
}

v1::StatsResponse Sample() {
  v1::StatsResponse s;
  s.set_live_buffers(3);
  s.set_live_bytes(12288);
  s.set_sessions(2);
  s.set_allocations_total(7);
  s.set_releases_total(4);
  s.set_grants_revoked_total(9);
  s.set_grpc_replies_cancelled_total(4);
  s.set_grpc_connections_cut_total(1);
  s.set_connections_rate_limited_total(3);
  s.set_read_views(11);
  (*s.mutable_denials_by_rule())["camera"] = 2;
  v1::ClientStats* c = s.add_clients();
  c->set_client("cam\"era\\x\ny");
  c->set_uid(1000);
  c->set_buffers(3);
  c->set_bytes(12288);
  c->set_allocations_total(7);
  v1::BackendStats* b = s.add_backends();
  b->set_name("memfd");
  b->set_live_buffers(3);
  b->set_pool_stock_buffers(5);
  b->set_pool_hits_total(6);
  b->set_pool_contended_misses_total(2);
  b->set_pool_trims_for_room_total(3);
  LatencyHistogram h;
  h.Record(absl::Microseconds(30));
  h.Record(absl::Microseconds(40));
  h.Record(absl::Milliseconds(20));
  *s.mutable_allocate_latency() = h.Read();
  s.set_policy_source("/etc/halloc/policy.textproto");
  return s;
}

// A scrape while allocations are recorded: the count is never more than
// the buckets hold (Prometheus's +Inf bucket must equal _count).
TEST(LatencyHistogramTest, AReadDuringRecordsCountsWhatItsBucketsHold) {
  LatencyHistogram h;
  std::atomic<bool> stop{false};
  std::thread recorder([&] {
    while (!stop.load(std::memory_order_relaxed)) h.Record(absl::Microseconds(30));
  });
  int mismatched = 0;
  for (int i = 0; i < 20000; ++i) {
    const v1::Histogram read = h.Read();
    uint64_t in_buckets = 0;
    for (uint64_t n : read.counts()) in_buckets += n;
    if (read.count() != in_buckets) ++mismatched;
  }
  stop = true;
  recorder.join();
  EXPECT_EQ(mismatched, 0) << "of 20000 reads";
}

TEST(PrometheusTest, RendersGaugesCountersLabelsAndACumulativeHistogram) {
  const std::string text = ToPrometheus(Sample());
  EXPECT_TRUE(absl::StrContains(text, "# TYPE halloc_live_buffers gauge\nhalloc_live_buffers 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "# TYPE halloc_allocations_total counter\nhalloc_allocations_total 7\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_denials_total{rule=\"camera\"} 2\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "# TYPE halloc_grants_revoked_total counter\nhalloc_grants_revoked_total 9\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_grpc_replies_cancelled_total 4\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_grpc_connections_cut_total 1\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_connections_rate_limited_total 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "# TYPE halloc_read_views gauge\nhalloc_read_views 11\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_pool_stock_buffers{backend=\"memfd\"} 5\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_pool_hits_total{backend=\"memfd\"} 6\n"));
  EXPECT_TRUE(absl::StrContains(
      text, "halloc_pool_contended_misses_total{backend=\"memfd\"} 2\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_pool_trims_for_room_total{backend=\"memfd\"} 3\n"));
  // Buckets are cumulative, le in seconds, +Inf equals _count.
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_bucket{le=\"2.5e-05\"} 0\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_bucket{le=\"5e-05\"} 2\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_bucket{le=\"0.025\"} 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_count 3\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_policy_info{source=\"/etc/halloc/policy.textproto\"} 1\n"));
  // Every line is a comment or a sample; HELP/TYPE once per family.
  int types = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "# HELP halloc_") ||
                absl::StartsWith(line, "# TYPE halloc_") ||
                absl::StartsWith(line, "halloc_"))
        << line;
    if (absl::StartsWith(line, "# TYPE halloc_client_bytes ")) ++types;
  }
  EXPECT_EQ(types, 1);
}

TEST(PrometheusTest, LabelValuesAreEscapedSoNoNameCanBreakALine) {
  const std::string text = ToPrometheus(Sample());
  EXPECT_TRUE(absl::StrContains(
      text, "halloc_client_bytes{client=\"cam\\\"era\\\\x\\ny\",uid=\"1000\"} 12288\n"))
      << text;
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  // What is no UTF-8, or would drive a terminal, is written as the text
  // \xNN: a label value must be UTF-8, and hallocctl's SafeOutput would
  // otherwise rewrite it into an escape the format does not have.
  EXPECT_EQ(EscapeLabelValue("p\xff\x1b]0;x\x07\xe2\x80\xae\tq"),
            "p\\\\xff\\\\x1b]0;x\\\\x07\\\\xe2\\\\x80\\\\xae\tq");
  EXPECT_EQ(EscapeLabelValue("caf\xc3\xa9"), "caf\xc3\xa9");  // é stays
}

// One row per client and uid owning buffers could be 65,536 per container;
// past kMaxClientRows those owning the least are summed in one row.
TEST(PrometheusTest, ClientRowsBeyondTheCapAreSummedInOneRow) {
  v1::StatsResponse s;
  const size_t n = kMaxClientRows + 10;
  for (size_t i = 0; i < n; ++i) {
    v1::ClientStats* c = s.add_clients();
    c->set_client("cam");
    c->set_uid(100000 + i);
    c->set_buffers(1);
    c->set_bytes(4096 * (i + 1));  // the first 10 own the least
    c->set_allocations_total(1);
  }
  const std::string text = ToPrometheus(s);
  int rows = 0, counter_rows = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "halloc_client_bytes{")) ++rows;
    if (absl::StartsWith(line, "halloc_client_allocations_total{")) ++counter_rows;
  }
  EXPECT_EQ(rows, kMaxClientRows + 1);
  EXPECT_EQ(counter_rows, kMaxClientRows) << "a folded counter would not only rise";
  EXPECT_FALSE(absl::StrContains(text, "uid=\"100009\"")) << "one of the least kept a row";
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("uid=\"", 100000 + n - 1, "\"")));
  // 4096 * (1 + ... + 10)
  EXPECT_TRUE(absl::StrContains(
      text, "halloc_client_bytes{client=\"(others)\",uid=\"(others)\"} 225280\n"));
  EXPECT_TRUE(
      absl::StrContains(text, "halloc_client_buffers{client=\"(others)\",uid=\"(others)\"} 10\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_client_rows_folded 10\n"));
}

TEST(PrometheusTest, EmptyStatsStillRenderEveryFamily) {
  const std::string text = ToPrometheus(v1::StatsResponse());
  EXPECT_TRUE(absl::StrContains(text, "halloc_live_buffers 0\n"));
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
  EXPECT_TRUE(absl::StrContains(text, "# TYPE halloc_denials_total counter\n"));
}

}  // namespace
}  // namespace halloc
