// LatencyHistogram: fixed buckets of durations, recorded without a lock on
// the request path (one relaxed atomic add to its bucket and one to the
// sum), read as a halloc.v1.Histogram for Stats and the Prometheus
// exposition.
//
// Thread-safe. `count` is the sum of the buckets as read, so the +Inf
// bucket always equals it (Prometheus takes a _count above +Inf for a
// broken histogram); a read concurrent with records may see a record in
// its bucket and not yet in `sum`.
#ifndef HALLOC_SERVICE_METRICS_HISTOGRAM_H_
#define HALLOC_SERVICE_METRICS_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc {

class LatencyHistogram {
 public:
  // Upper bounds in seconds: 25 µs … 1 s, about 2.5× apart (a warm
  // allocation is tens of µs; a cold 32 MiB one is milliseconds).
  static constexpr std::array<double, 12> kBounds = {
      25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
      2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0};

  void Record(absl::Duration d);
  v1::Histogram Read() const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> counts_{};
  std::atomic<uint64_t> sum_ns_{0};
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_METRICS_HISTOGRAM_H_
