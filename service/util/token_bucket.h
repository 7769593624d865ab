// TokenBucket: a count of tokens that refills at a rate up to a burst, as
// the per-uid rate limits keep it (ConnectRate's connects, the control
// relay's stream resets). The rate and the burst are the caller's, given
// at each look, so that one limit may change (a policy reload) under
// buckets already counted.
#ifndef HALLOC_SERVICE_UTIL_TOKEN_BUCKET_H_
#define HALLOC_SERVICE_UTIL_TOKEN_BUCKET_H_

#include <algorithm>

#include "absl/time/time.h"

namespace halloc {

struct TokenBucket {
  double tokens = 0;
  absl::Time at;  // when `tokens` was counted

  // The tokens at `now`: refilled at `per_second` since `at`, up to `burst`.
  double Level(absl::Time now, double per_second, double burst) const {
    return std::min(burst, tokens + per_second * absl::ToDoubleSeconds(now - at));
  }
  // Counts the refill up to `now`.
  void Refill(absl::Time now, double per_second, double burst) {
    tokens = Level(now, per_second, burst);
    at = now;
  }
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_TOKEN_BUCKET_H_
