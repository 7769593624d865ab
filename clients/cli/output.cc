#include "clients/cli/output.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "clients/cli/safe_output.h"
#include "clients/cpp/halloc/base/rights.h"
#include "clients/cpp/halloc/base/usage.h"
#include "clients/cpp/halloc/client.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "service/layout/format.h"
#include "service/layout/layout.h"

namespace halloc::cli {

std::string Json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    // Only a message with invalid UTF-8 in a string field can fail; hallocd
    // escapes every name it reports, so say so rather than print half.
    out = R"({"error":"not representable as JSON"})";
  }
  out += '\n';
  return JsonTerminalSafe(out);
}

absl::string_view AccessName(v1::CpuAccess access) {
  absl::StatusOr<CpuAccess> a = FromProto(access);
  return a.ok() ? CpuAccessName(*a) : "-";
}

std::string BlendModeName(v1::BlendMode mode) {
  if (mode == v1::BLEND_MODE_INVALID) return "unset";
  std::string name = v1::BlendMode_Name(mode);
  absl::string_view short_name = name;
  absl::ConsumePrefix(&short_name, "BLEND_MODE_");
  return absl::AsciiStrToLower(short_name);
}

void PrintBuffer(std::ostream& out, const v1::BufferInfo& b, bool detail) {
  out << absl::StreamFormat("buffer %d  %-20s %10d bytes  %-6s owner uid %d  cpu %s  usage %s\n",
                            b.id(), OneLine(b.name()), b.size(), OneLine(b.backend()),
                            b.owner_uid(), AccessName(b.cpu_access()), usage::ToString(b.usage()));
  for (const v1::Holder& h : b.holders()) {
    if (h.session_id() == 0) {  // not shown to an importer (v1::Holder)
      out << absl::StreamFormat("    held by another session%s\n",
                                h.owner() ? absl::StrCat(" (uid ", h.uid(), ") [owner]") : "");
      continue;
    }
    out << absl::StreamFormat("    held by session %d (pid %d, uid %d)%s%s\n", h.session_id(),
                              h.pid(), h.uid(), h.owner() ? " [owner]" : "",
                              h.caller() ? " [you]" : "");
  }
  if (!detail) return;
  if (b.layout().planes_size() > 0) out << layout::Describe(b.layout());
  const v1::BufferMetadata& m = b.metadata();
  std::string crop = absl::StrJoin(m.crop(), " ", [](std::string* s, const v1::Rect& r) {
    absl::StrAppend(s, r.left(), ",", r.top(), ",", r.right(), ",", r.bottom());
  });
  out << absl::StreamFormat("    metadata: dataspace 0x%x  blend-mode %s  crop %s\n",
                            m.dataspace(), BlendModeName(m.blend_mode()),
                            crop.empty() ? "-" : crop);
}

void PrintStats(std::ostream& out, const v1::StatsResponse& s) {
  out << absl::StreamFormat(
      "live buffers  %d\nlive bytes    %d\nsessions      %d\n"
      "grants        %d (%d revoked since start)\nallocations   %d (since start)\n"
      "releases      %d (since start)\n",
      s.live_buffers(), s.live_bytes(), s.sessions(), s.grants(), s.grants_revoked_total(),
      s.allocations_total(), s.releases_total());
  if (s.grpc_replies_cancelled_total() != 0 || s.grpc_connections_cut_total() != 0) {
    out << absl::StreamFormat(
        "control guards  %d replies cancelled, %d connections cut (unread by their "
        "clients; since start)\n",
        s.grpc_replies_cancelled_total(), s.grpc_connections_cut_total());
  }
  if (s.connections_rate_limited_total() != 0) {
    out << absl::StreamFormat(
        "connect rate  %d connections refused (their uid connected too fast; since start)\n",
        s.connections_rate_limited_total());
  }
  if (s.max_buffers() != 0) {
    out << absl::StreamFormat("buffer limit  %d (hallocd's, all clients", s.max_buffers());
    if (s.read_views() != 0) {
      out << absl::StreamFormat("; %d read-only views count in it", s.read_views());
    }
    out << ")\n";
  }
  if (s.released_held_buffers() != 0 || s.released_unwatched_total() != 0) {
    out << absl::StreamFormat(
        "released, still held  %d buffers, %d bytes (charged until gone; "
        "%d not followed)\n",
        s.released_held_buffers(), s.released_held_bytes(),
        s.released_unwatched_total());
  }
  for (const v1::BackendStats& b : s.backends()) {
    out << absl::StreamFormat("backend %-8s %d buffers, %d bytes\n", OneLine(b.name()),
                              b.live_buffers(), b.live_bytes());
  }
  out << absl::StreamFormat("policy        %s (%d failed reloads)\n", OneLine(s.policy_source()),
                            s.policy_reload_failures());
  for (const auto& [rule, n] : s.denials_by_rule()) {
    out << absl::StreamFormat("denials       %d by rule '%s'\n", n, OneLine(rule));
  }
  if (s.only_callers_uid()) {
    out << "(as one user sees them: other users' per-client rows and the denials are for root)\n";
  }
}

void PrintDump(std::ostream& out, const v1::DumpResponse& d) {
  out << absl::StreamFormat("%-8s %-7s %-6s %-12s %14s %14s  %s\n", "session", "pid",
                            "uid", "client", "owned", "imported", "exe");
  for (const v1::SessionUsage& s : d.sessions()) {
    out << absl::StreamFormat("%-8d %-7d %-6d %-12s %4d / %7dK %4d / %7dK  %s\n", s.session_id(),
                              s.pid(), s.uid(), s.client().empty() ? "-" : OneLine(s.client()),
                              s.owned_buffers(), s.owned_bytes() / 1024, s.imported_buffers(),
                              s.imported_bytes() / 1024,
                              // The client chose its file's name: a newline
                              // in it would forge a row.
                              absl::CHexEscape(s.exe()));
  }
  if (d.clients_size() > 0) out << "\nquota use (owned, all sessions):\n";
  for (const v1::ClientQuota& c : d.clients()) {
    out << absl::StreamFormat(
        "  %-12s uid %-6d %d buffers of %s, %d bytes of %s\n", OneLine(c.client()), c.uid(),
        c.buffers(), c.quota_buffers() ? absl::StrCat(c.quota_buffers()) : "unlimited", c.bytes(),
        c.quota_bytes() ? absl::StrCat(c.quota_bytes()) : "unlimited");
  }
}

void PrintGrant(std::ostream& out, const v1::Grant& g) {
  const std::string peer = g.peer().has_name()
                               ? absl::StrCat("client '", OneLine(g.peer().name()), "'")
                               : absl::StrCat("uid ", g.peer().uid());
  out << absl::StreamFormat("grant %d buffer %d to %s, cpu %s: token %s\n", g.id(), g.buffer_id(),
                            peer, AccessName(g.cpu_access()), OneLine(g.token()));
}

void PrintFormats(std::ostream& out, bool json) {
  if (json) {
    google::protobuf::Struct table;
    google::protobuf::ListValue* list =
        (*table.mutable_fields())["formats"].mutable_list_value();
    auto add = [&](absl::string_view name, uint32_t fourcc, int planes, bool yv12) {
      auto& f = *list->add_values()->mutable_struct_value()->mutable_fields();
      f["name"].set_string_value(std::string(name));
      f["fourcc"].set_number_value(fourcc);
      f["planes"].set_number_value(planes);
      f["android_yv12"].set_bool_value(yv12);
    };
    for (const format::FormatInfo& f : format::All()) {
      add(f.name, f.fourcc, f.num_planes, f.android_yv12);
    }
    add("BLOB", format::kBlob, 0, false);
    out << Json(table);
    return;
  }
  out << "formats (DRM fourcc, linear modifier):\n";
  for (const format::FormatInfo& f : format::All()) {
    out << absl::StreamFormat("  %-14s 0x%08x  %d plane(s)%s\n", f.name, f.fourcc,
                              f.num_planes,
                              f.android_yv12 ? "  (Android YV12 layout)" : "");
  }
  out << "  BLOB           size only (--size)\n";
}

void PrintSupported(std::ostream& out, const v1::IsSupportedResponse& r) {
  if (!r.supported()) {
    // The refusal's code as libhalloc reads it (never OK), with hallocd's
    // reason as it gave it.
    const absl::Status why(SupportStatus(r).code(), OneLine(r.reason()));
    out << "not supported: " << why << "\n";
    return;
  }
  out << "supported on backend " << OneLine(r.backend()) << "\n";
  if (r.layout().planes_size() > 0) out << layout::Describe(r.layout());
}

}  // namespace halloc::cli
