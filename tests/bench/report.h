// The benchmark's result table: rows judged against a floor measured in the
// same run, printed as one aligned table (and optionally JSON). Shared by
// halloc_bench (tests/bench) and the in-guest kernel_bench (tests/kernel).
#ifndef HALLOC_TESTS_BENCH_REPORT_H_
#define HALLOC_TESTS_BENCH_REPORT_H_

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace halloc::bench {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Row {
  std::string name;
  double value = kNaN;
  std::string unit;
  std::string floor_name;  // empty: this row is a floor
  double floor_value = kNaN;
  std::optional<double> target;
  bool higher_is_better = false;
  std::string note;  // why a row has no value, or what bounds it

  // value ÷ floor (NaN for a floor row).
  double ratio() const;
  // nullopt: no target. A row without a finite ratio misses its target.
  std::optional<bool> met() const;
};

// A floor, shown for context; judged rows name it.
Row FloorRow(std::string name, double value, std::string unit);

// A row judged against `floor_value`: met when value ÷ floor is <= target
// (>= with higher_is_better).
Row Compare(std::string name, double value, std::string unit,
            std::string floor_name, double floor_value,
            std::optional<double> target = std::nullopt,
            bool higher_is_better = false);

// The table on stdout: name, value, unit, floor, floor_val, ratio, target,
// met (yes/NO/-), a "^ note" line under a row that has one.
void PrintRows(const std::vector<Row>& rows);

// The rows as a JSON array of objects (name, value, unit, floor_name,
// floor_value, ratio, target, met[, note]); non-finite numbers are null.
absl::Status WriteRowsJson(const std::vector<Row>& rows,
                           const std::string& path);

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_REPORT_H_
