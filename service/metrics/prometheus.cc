#include "service/metrics/prometheus.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "clients/cli/safe_output.h"

namespace halloc {

namespace {

// One metric family: HELP and TYPE once, then its samples.
class Family {
 public:
  Family(std::string* out, absl::string_view name, absl::string_view type,
         absl::string_view help)
      : out_(out), name_(name) {
    absl::StrAppend(out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ",
                    type, "\n");
  }
  // `labels`: name/value pairs, values escaped here.
  void Sample(double value,
              std::vector<std::pair<absl::string_view, std::string>> labels = {},
              absl::string_view suffix = "") {
    absl::StrAppend(out_, name_, suffix);
    if (!labels.empty()) {
      out_->push_back('{');
      for (size_t i = 0; i < labels.size(); ++i) {
        absl::StrAppend(out_, i ? "," : "", labels[i].first, "=\"",
                        EscapeLabelValue(labels[i].second), "\"");
      }
      out_->push_back('}');
    }
    absl::StrAppend(out_, " ", Number(value), "\n");
  }

  static std::string Number(double v) {
    // Integers (counts, bytes) exactly; others in shortest round-trip form.
    if (v >= 0 && v < 9.007199254740992e15 && v == static_cast<double>(
                                                      static_cast<uint64_t>(v))) {
      return absl::StrCat(static_cast<uint64_t>(v));
    }
    return absl::StrFormat("%.9g", v);
  }

 private:
  std::string* out_;
  std::string name_;
};

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  // What would drive a terminal (control characters, C1, bidirectional
  // overrides) and bytes that are no UTF-8, as the text \xNN: a label value
  // must be UTF-8, and `hallocctl stats --prometheus` (printed through
  // SafeOutput) must stay what promtool accepts.
  for (char c : cli::TerminalSafe(value)) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string ToPrometheus(const v1::StatsResponse& s) {
  std::string out;
  Family(&out, "halloc_live_buffers", "gauge", "Buffers alive now.")
      .Sample(s.live_buffers());
  Family(&out, "halloc_live_bytes", "gauge", "Bytes of the buffers alive now.")
      .Sample(s.live_bytes());
  Family(&out, "halloc_sessions", "gauge", "Open client sessions.")
      .Sample(s.sessions());
  Family(&out, "halloc_grants", "gauge", "Open share grants.").Sample(s.grants());
  Family(&out, "halloc_allocations_total", "counter",
         "Buffers allocated since start.")
      .Sample(s.allocations_total());
  Family(&out, "halloc_releases_total", "counter",
         "Buffers freed since start.")
      .Sample(s.releases_total());
  Family(&out, "halloc_grants_revoked_total", "counter",
         "Grants withdrawn since start: by revokes (those taken down the chain included), "
         "and by hallocd for Shares whose callers gave up.")
      .Sample(s.grants_revoked_total());
  Family(&out, "halloc_grpc_replies_cancelled_total", "counter",
         "gRPC calls cancelled since start: their reply waited too long for its client.")
      .Sample(s.grpc_replies_cancelled_total());
  Family(&out, "halloc_grpc_connections_cut_total", "counter",
         "Control connections shut down since start: their peer left what was sent it unread.")
      .Sample(s.grpc_connections_cut_total());
  Family(&out, "halloc_connections_rate_limited_total", "counter",
         "Connections refused at accept since start, both sockets: their uid opened them "
         "faster than the policy's sessions.connects_per_second.")
      .Sample(s.connections_rate_limited_total());
  Family(&out, "halloc_read_views", "gauge",
         "Read-only views of memfd buffers hallocd keeps for their read-only holders "
         "(an fd each, within --max_buffers).")
      .Sample(s.read_views());
  Family(&out, "halloc_released_held_buffers", "gauge",
         "Released buffers whose memory a process still holds, still charged.")
      .Sample(s.released_held_buffers());
  Family(&out, "halloc_released_held_bytes", "gauge",
         "Bytes of released buffers a process still holds, still charged.")
      .Sample(s.released_held_bytes());
  Family(&out, "halloc_released_unwatched_total", "counter",
         "Released buffers that could not be followed at all (charge returned at once).")
      .Sample(s.released_unwatched_total());

  // Per-client rows: one family each, a sample per client and uid.
  struct ClientFamily {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (v1::ClientStats::*value)() const;
  };
  static constexpr ClientFamily kClientFamilies[] = {
      {"halloc_client_buffers", "gauge",
       "Buffers a client (policy rule) owns, per uid.", &v1::ClientStats::buffers},
      {"halloc_client_bytes", "gauge",
       "Bytes a client (policy rule) owns, per uid.", &v1::ClientStats::bytes},
      {"halloc_client_allocations_total", "counter",
       "Buffers a client (policy rule) allocated, per uid, since that uid last owned none.",
       &v1::ClientStats::allocations_total},
  };
  // The kMaxClientRows rows owning the most bytes have series of their
  // own; the gauges of the rest are summed in one row, and their counters
  // left out (a sum over rows that come and go would not only rise).
  std::vector<const v1::ClientStats*> rows;
  rows.reserve(s.clients_size());
  for (const auto& c : s.clients()) rows.push_back(&c);
  std::vector<const v1::ClientStats*> folded;
  if (rows.size() > kMaxClientRows) {
    // Ties go to the first client and uid, so that equal rows do not
    // trade places from one scrape to the next.
    auto named_first = [](const v1::ClientStats* a, const v1::ClientStats* b) {
      return a->client() != b->client() ? a->client() < b->client() : a->uid() < b->uid();
    };
    auto more = [&named_first](const v1::ClientStats* a, const v1::ClientStats* b) {
      if (a->bytes() != b->bytes()) return a->bytes() > b->bytes();
      if (a->buffers() != b->buffers()) return a->buffers() > b->buffers();
      return named_first(a, b);
    };
    std::nth_element(rows.begin(), rows.begin() + kMaxClientRows, rows.end(), more);
    folded.assign(rows.begin() + kMaxClientRows, rows.end());
    rows.resize(kMaxClientRows);
    std::sort(rows.begin(), rows.end(), named_first);
  }
  for (const ClientFamily& f : kClientFamilies) {
    Family family(&out, f.name, f.type, f.help);
    for (const v1::ClientStats* c : rows) {
      family.Sample((c->*f.value)(), {{"client", c->client()}, {"uid", absl::StrCat(c->uid())}});
    }
    if (!folded.empty() && absl::string_view(f.type) == "gauge") {
      uint64_t sum = 0;
      for (const v1::ClientStats* c : folded) sum += (c->*f.value)();
      family.Sample(sum, {{"client", kFoldedClients}, {"uid", kFoldedClients}});
    }
  }
  Family(&out, "halloc_client_rows_folded", "gauge",
         absl::StrCat("Client and uid pairs owning buffers beyond the ", kMaxClientRows,
                      " with rows of their own, summed in client=\"", kFoldedClients, "\"."))
      .Sample(folded.size());
  Family denials(&out, "halloc_denials_total", "counter",
                 "Requests refused by policy since start, by deciding rule.");
  for (const auto& [rule, n] : s.denials_by_rule()) {
    denials.Sample(n, {{"rule", rule}});
  }

  // Per-backend rows: one family each, a sample per backend.
  struct BackendFamily {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (v1::BackendStats::*value)() const;
  };
  static constexpr BackendFamily kBackendFamilies[] = {
      {"halloc_backend_live_buffers", "gauge", "Buffers alive now, per backend.",
       &v1::BackendStats::live_buffers},
      {"halloc_backend_live_bytes", "gauge", "Bytes alive now, per backend.",
       &v1::BackendStats::live_bytes},
      {"halloc_pool_stock_buffers", "gauge", "Fresh buffers a pooling backend holds in stock.",
       &v1::BackendStats::pool_stock_buffers},
      {"halloc_pool_stock_bytes", "gauge", "Bytes a pooling backend holds in stock.",
       &v1::BackendStats::pool_stock_bytes},
      {"halloc_pool_hits_total", "counter", "Allocations served from a pool's stock since start.",
       &v1::BackendStats::pool_hits_total},
      {"halloc_pool_misses_total", "counter", "Allocations a pool had no stock for since start.",
       &v1::BackendStats::pool_misses_total},
      {"halloc_pool_contended_misses_total", "counter",
       "Of the misses, those made because the pool's lock stayed held.",
       &v1::BackendStats::pool_contended_misses_total},
      {"halloc_pool_trims_for_room_total", "counter",
       "Times a pool freed stock because a buffer could not be made (memory, fds).",
       &v1::BackendStats::pool_trims_for_room_total},
  };
  for (const BackendFamily& f : kBackendFamilies) {
    Family family(&out, f.name, f.type, f.help);
    for (const auto& b : s.backends()) {
      family.Sample((b.*f.value)(), {{"backend", b.name()}});
    }
  }

  const v1::Histogram& h = s.allocate_latency();
  Family latency(&out, "halloc_allocate_latency_seconds", "histogram",
                 "Time from an Allocate reaching the core to its fds being queued.");
  uint64_t cumulative = 0;
  for (int i = 0; i < h.counts_size(); ++i) {
    cumulative += h.counts(i);
    const std::string le = i < h.upper_bounds_size()
                                ? Family::Number(h.upper_bounds(i))
                                : std::string("+Inf");
    latency.Sample(cumulative, {{"le", le}}, "_bucket");
  }
  if (h.counts_size() == 0) latency.Sample(0, {{"le", "+Inf"}}, "_bucket");
  latency.Sample(h.sum(), {}, "_sum");
  latency.Sample(h.count(), {}, "_count");

  Family(&out, "halloc_policy_reload_failures_total", "counter",
         "Policy reloads (SIGHUP) that failed and left the old policy in force.")
      .Sample(s.policy_reload_failures());
  Family(&out, "halloc_policy_info", "gauge",
         "Where the policy in force came from (always 1).")
      .Sample(1, {{"source", s.policy_source()}});
  return out;
}

}  // namespace halloc
