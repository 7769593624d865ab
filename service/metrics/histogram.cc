#include "service/metrics/histogram.h"

#include <algorithm>

namespace halloc {

void LatencyHistogram::Record(absl::Duration d) {
  const double seconds = absl::ToDoubleSeconds(d);
  // The first bound at or above the value; past the last: the +Inf bucket.
  const size_t i =
      std::lower_bound(kBounds.begin(), kBounds.end(), seconds) - kBounds.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  sum_ns_.fetch_add(ns > 0 ? static_cast<uint64_t>(ns) : 0,
                    std::memory_order_relaxed);
}

v1::Histogram LatencyHistogram::Read() const {
  v1::Histogram h;
  for (double b : kBounds) h.add_upper_bounds(b);
  uint64_t count = 0;
  for (const auto& c : counts_) {
    const uint64_t n = c.load(std::memory_order_relaxed);
    h.add_counts(n);
    count += n;
  }
  h.set_count(count);
  h.set_sum(static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) * 1e-9);
  return h;
}

}  // namespace halloc
