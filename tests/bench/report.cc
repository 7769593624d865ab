#include "tests/bench/report.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace halloc::bench {

double Row::ratio() const {
  return floor_name.empty() ? kNaN : value / floor_value;
}

std::optional<bool> Row::met() const {
  if (!target) return std::nullopt;
  const double r = ratio();
  if (!std::isfinite(r)) return false;
  return higher_is_better ? r >= *target : r <= *target;
}

Row FloorRow(std::string name, double value, std::string unit) {
  Row r;
  r.name = std::move(name);
  r.value = value;
  r.unit = std::move(unit);
  return r;
}

Row Compare(std::string name, double value, std::string unit,
            std::string floor_name, double floor_value,
            std::optional<double> target, bool higher_is_better) {
  Row r = FloorRow(std::move(name), value, std::move(unit));
  r.floor_name = std::move(floor_name);
  r.floor_value = floor_value;
  r.target = target;
  r.higher_is_better = higher_is_better;
  return r;
}

namespace {

std::string Num(double v) {
  if (!std::isfinite(v)) return "-";
  if (std::fabs(v) >= 1000) return absl::StrFormat("%.0f", v);
  if (std::fabs(v) >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.3g", v);
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

void PrintRows(const std::vector<Row>& rows) {
  std::printf("%-38s %10s %-8s %-40s %10s %6s %6s %s\n", "name", "value", "unit",
              "floor", "floor_val", "ratio", "target", "met");
  for (const Row& r : rows) {
    const std::optional<bool> met = r.met();
    std::printf("%-38s %10s %-8s %-40s %10s %6s %6s %s\n", r.name.c_str(),
                Num(r.value).c_str(), r.unit.c_str(),
                r.floor_name.empty() ? "-" : r.floor_name.c_str(),
                Num(r.floor_value).c_str(),
                std::isfinite(r.ratio()) ? absl::StrFormat("%.2f", r.ratio()).c_str() : "-",
                r.target ? absl::StrCat(r.higher_is_better ? ">=" : "<=", *r.target).c_str() : "-",
                met ? (*met ? "yes" : "NO") : "-");
    if (!r.note.empty()) std::printf("    ^ %s\n", r.note.c_str());
  }
}

absl::Status WriteRowsJson(const std::vector<Row>& rows,
                           const std::string& path) {
  std::ostringstream j;
  j << "[\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const std::optional<bool> met = r.met();
    j << "  {\"name\": " << JsonString(r.name)
      << ", \"value\": " << JsonNumber(r.value)
      << ", \"unit\": " << JsonString(r.unit) << ", \"floor_name\": "
      << (r.floor_name.empty() ? "null" : JsonString(r.floor_name))
      << ", \"floor_value\": " << JsonNumber(r.floor_value)
      << ", \"ratio\": " << JsonNumber(r.ratio())
      << ", \"target\": " << (r.target ? JsonNumber(*r.target) : "null")
      << ", \"met\": " << (met ? (*met ? "true" : "false") : "null");
    if (!r.note.empty()) j << ", \"note\": " << JsonString(r.note);
    j << "}"
      << (i + 1 < rows.size() ? ",\n" : "\n");
  }
  j << "]\n";
  std::ofstream out(path);
  out << j.str();
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace halloc::bench
