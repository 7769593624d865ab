// hallocd's statistics in the Prometheus text exposition format (0.0.4):
// what `hallocctl stats --prometheus` writes for node_exporter's textfile
// collector and what hallocd's optional /metrics endpoint serves. One
// rendering for both, from the Stats reply, so they cannot disagree.
//
// Every metric is prefixed halloc_. Label values (client and rule names
// come from the policy, backend names from the daemon) are escaped as the
// format requires; nothing a client sends becomes a label.
#ifndef HALLOC_SERVICE_METRICS_PROMETHEUS_H_
#define HALLOC_SERVICE_METRICS_PROMETHEUS_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc {

// Per client and uid (halloc_client_*): at most kMaxClientRows rows, those
// owning the most bytes. A root-owned container's uids count as
// themselves, so a rows per uid that owns a buffer could reach 65,536 per
// container (some 13 MB of text per scrape, and as many series in the
// scraper's database); the rest are summed in one row labelled
// kFoldedClients (gauges only), and halloc_client_rows_folded says how
// many they were.
inline constexpr size_t kMaxClientRows = 256;
inline constexpr char kFoldedClients[] = "(others)";

std::string ToPrometheus(const v1::StatsResponse& stats);

// A label value escaped for the text format: \\, \" and \n.
std::string EscapeLabelValue(absl::string_view value);

}  // namespace halloc

#endif  // HALLOC_SERVICE_METRICS_PROMETHEUS_H_
