// The monotonic clock as an absl::Time: for deadlines and pauses that a
// step of the wall clock must neither stretch nor cut short. Only
// differences between its readings mean anything (never print one as a
// date).
#ifndef HALLOC_SERVICE_UTIL_CLOCK_H_
#define HALLOC_SERVICE_UTIL_CLOCK_H_

#include <chrono>

#include "absl/time/time.h"

namespace halloc {

inline absl::Time MonotonicNow() {
  return absl::UnixEpoch() +
         absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_CLOCK_H_
