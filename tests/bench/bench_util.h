// Small helpers shared by the benchmark driver and its worker processes.
#ifndef HALLOC_TESTS_BENCH_BENCH_UTIL_H_
#define HALLOC_TESTS_BENCH_BENCH_UTIL_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace halloc::bench {

// CLOCK_MONOTONIC in nanoseconds.
int64_t NowNs();

// Nearest-rank percentiles of a sample set, in the samples' unit; NaN
// samples are ignored, and an empty set gives NaN.
struct Summary {
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
  size_t n = 0;
};
Summary Summarize(std::vector<double> samples);
// "<prefix>.p50 <v>\n<prefix>.p90 <v>\n..." for the worker protocol.
std::string FormatSummary(const std::string& prefix, const Summary& s);

// Of a run of calls, each with the CPU it started and ended on
// (sched_getcpu; -1: unknown), the percentage during which, or since the
// previous call's end, the caller changed CPU (comparisons with an unknown
// CPU do not count); NaN without calls.
struct CallCpus {
  int before = -1;
  int after = -1;
};
double CpuChangePct(const std::vector<CallCpus>& calls);

// Raises RLIMIT_NOFILE's soft limit to the hard limit, and with
// `raise_hard` (needs CAP_SYS_RESOURCE) the hard limit to `hard` first.
void RaiseFdLimit(bool raise_hard, uint64_t hard = 1 << 20);

// "--key=value" arguments (after the subcommand) as a map.
class Args {
 public:
  Args(int argc, char** argv);
  std::string Str(const std::string& key, const std::string& def = "") const;
  int64_t Int(const std::string& key, int64_t def = 0) const;
  bool Has(const std::string& key) const { return values_.count(key) > 0; }

 private:
  std::map<std::string, std::string> values_;
};

// Blocks until a line arrives on stdin; false at EOF.
bool ReadStdinLine(std::string* line);

// For the workers: microseconds between two NowNs(); `text` on stdout at
// once (the driver reads it as it comes); "halloc_bench: what: status" on
// stderr, returning the exit code 1; waits until the driver closes our
// stdin (or says anything).
double Us(int64_t from_ns, int64_t to_ns);
void Say(const std::string& text);
int Fail(const std::string& what, const absl::Status& status);
void WaitForDriver();

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_BENCH_UTIL_H_
