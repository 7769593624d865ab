#include "clients/cli/flags.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

ABSL_FLAG(std::string, control_socket, "",
          "hallocd's gRPC socket (default: $HALLOC_CONTROL_SOCKET, else "
          "control.sock in $XDG_RUNTIME_DIR/halloc where either socket is "
          "there, else in /run/halloc)");
ABSL_FLAG(std::string, broker_socket, "",
          "hallocd's broker socket (default: $HALLOC_BROKER_SOCKET, else "
          "broker.sock in the control socket's default directory)");
ABSL_FLAG(uint64_t, size, 0, "allocate/supported: blob size in bytes");
ABSL_FLAG(std::string, format, "",
          "allocate/supported: DRM format name (NV12, ARGB8888, YV12 (Android's: even "
          "sizes, no decoder/encoder usage), P010, ...; see `hallocctl supported`)");
ABSL_FLAG(uint32_t, width, 0, "allocate/supported: image width in pixels");
ABSL_FLAG(uint32_t, height, 0, "allocate/supported: image height in pixels");
ABSL_FLAG(uint32_t, layers, 1, "allocate/supported: layer count");
ABSL_FLAG(std::string, usage, "",
          "allocate/supported: usage bits, comma-separated names "
          "(cpu_read_often,cpu_write_often,gpu_texture,gpu_render_target,"
          "composer_overlay,camera_output,camera_input,video_encoder,"
          "video_decoder,...) or a hex mask");
ABSL_FLAG(uint32_t, count, 1, "allocate: number of buffers");
ABSL_FLAG(std::string, name, "", "allocate: buffer name");
ABSL_FLAG(bool, hold, false,
          "allocate/import: keep the buffers (and this session) until Ctrl-C "
          "or SIGTERM; without it they are released when hallocctl exits");
ABSL_FLAG(bool, all, false, "list: every live buffer (root or daemon uid)");
ABSL_FLAG(bool, json, false,
          "every command that prints a reply (list, describe, stats, dump, "
          "supported, watch, allocate, import, share, set-metadata): print it "
          "as protobuf JSON, one object per line, field names as in "
          "allocator.proto");
ABSL_FLAG(bool, map_check, false,
          "import: map the buffer with the rights the grant gave, and check "
          "that wider rights are refused");
ABSL_FLAG(int64_t, uid, -1, "share: the uid that may import the grant");
ABSL_FLAG(std::string, client, "",
          "share: the client (policy rule name) that may import the grant");
ABSL_FLAG(std::string, access, "",
          "share: the grant's CPU rights, none|read|read-write (default: "
          "yours, narrowed to what the receiver may hold)");
ABSL_FLAG(bool, prometheus, false,
          "stats: the Prometheus text format (for node_exporter's textfile "
          "collector: tmp=$(mktemp DIR/halloc.prom.XXXXXX) && hallocctl stats --prometheus "
          ">\"$tmp\" && chmod 0644 \"$tmp\" && mv \"$tmp\" DIR/halloc.prom)");
ABSL_FLAG(bool, dump, false, "watch: refresh `dump` instead of `stats`");
ABSL_FLAG(absl::Duration, interval, absl::Seconds(1),
          "watch: time between refreshes (500ms, 2s, ...)");
ABSL_FLAG(uint32_t, iterations, 0, "watch: stop after this many reports (0: until Ctrl-C)");

namespace halloc::cli {
namespace {

constexpr char kUsagePayload[] = "type.halloc/hallocctl.usage";

// Only hallocctl's own flags: not those other libraries might register.
absl::CommandLineFlag* FindOurFlag(absl::string_view name) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr || !absl::StrContains(flag->Filename(), "clients/cli/")) {
    return nullptr;
  }
  return flag;
}

// Sets one flag from `tokens[*i]` (and the next token for a value given
// apart), advancing *i past what it used.
absl::Status SetFlag(absl::Span<const std::string> tokens, size_t* i,
                     absl::Span<const absl::string_view> refused) {
  absl::string_view body = tokens[*i];
  absl::ConsumePrefix(&body, "-");
  absl::ConsumePrefix(&body, "-");
  const size_t eq = body.find('=');
  const bool inline_value = eq != absl::string_view::npos;
  // --map-check and --map_check alike.
  const std::string name = absl::StrReplaceAll(body.substr(0, eq), {{"-", "_"}});
  const absl::string_view value = inline_value ? body.substr(eq + 1) : "";
  absl::CommandLineFlag* flag = FindOurFlag(name);
  bool negated = false;
  if (flag == nullptr && !inline_value && absl::StartsWith(name, "no")) {
    flag = FindOurFlag(absl::string_view(name).substr(2));
    negated = flag != nullptr && flag->IsOfType<bool>();
    if (!negated) flag = nullptr;
  }
  if (flag == nullptr) return UsageError(absl::StrCat("unknown flag --", name));
  if (std::find(refused.begin(), refused.end(), flag->Name()) != refused.end()) {
    return UsageError(absl::StrCat("--", flag->Name(), " cannot be used in a session"));
  }
  std::string text(value);
  if (flag->IsOfType<bool>() && !inline_value) {
    text = negated ? "false" : "true";
  } else if (!inline_value) {
    if (*i + 1 >= tokens.size()) {
      return UsageError(absl::StrCat("--", name, " needs a value"));
    }
    text = tokens[++*i];
  }
  std::string error;
  if (!flag->ParseFrom(text, &error)) {
    return UsageError(absl::StrCat("--", name, ": ", error));
  }
  return absl::OkStatus();
}

}  // namespace

Options Options::FromFlags() {
  Options o;
  o.control_socket = absl::GetFlag(FLAGS_control_socket);
  o.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  o.size = absl::GetFlag(FLAGS_size);
  o.format = absl::GetFlag(FLAGS_format);
  o.width = absl::GetFlag(FLAGS_width);
  o.height = absl::GetFlag(FLAGS_height);
  o.layers = absl::GetFlag(FLAGS_layers);
  o.usage = absl::GetFlag(FLAGS_usage);
  o.count = absl::GetFlag(FLAGS_count);
  o.name = absl::GetFlag(FLAGS_name);
  o.hold = absl::GetFlag(FLAGS_hold);
  o.all = absl::GetFlag(FLAGS_all);
  o.json = absl::GetFlag(FLAGS_json);
  o.prometheus = absl::GetFlag(FLAGS_prometheus);
  o.map_check = absl::GetFlag(FLAGS_map_check);
  o.uid = absl::GetFlag(FLAGS_uid);
  o.client = absl::GetFlag(FLAGS_client);
  o.access = absl::GetFlag(FLAGS_access);
  o.dump = absl::GetFlag(FLAGS_dump);
  o.interval = absl::GetFlag(FLAGS_interval);
  o.iterations = absl::GetFlag(FLAGS_iterations);
  return o;
}

absl::Status UsageError(absl::string_view message) {
  absl::Status s = absl::InvalidArgumentError(message);
  s.SetPayload(kUsagePayload, absl::Cord());
  return s;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

absl::StatusOr<std::vector<std::string>> ParseArgs(
    absl::Span<const std::string> tokens,
    absl::Span<const absl::string_view> refused) {
  std::vector<std::string> words;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t == "--") {
      words.insert(words.end(), tokens.begin() + i + 1, tokens.end());
      break;
    }
    const bool flag = t.size() >= 2 && t[0] == '-' && !absl::ascii_isdigit(t[1]);
    if (!flag) {
      words.push_back(t);
      continue;
    }
    if (absl::Status s = SetFlag(tokens, &i, refused); !s.ok()) return s;
  }
  return words;
}

FlagScope::FlagScope() {
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (FindOurFlag(name) != nullptr) saved_.emplace_back(flag, flag->CurrentValue());
  }
}

FlagScope::~FlagScope() {
  for (const auto& [flag, value] : saved_) {
    std::string ignored;  // the value came from the flag itself
    if (flag->CurrentValue() != value) flag->ParseFrom(value, &ignored);
  }
}

std::string FlagsHelp() {
  std::vector<absl::CommandLineFlag*> ours;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (FindOurFlag(name) != nullptr) ours.push_back(flag);
  }
  std::sort(ours.begin(), ours.end(),
            [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::string out =
      "Flags (anywhere on the line; --name=value or --name value; - and _ alike):\n";
  for (const absl::CommandLineFlag* f : ours) {
    const std::string def = f->DefaultValue();
    absl::StrAppendFormat(&out, "  --%s\n      %s%s\n",
                          absl::StrReplaceAll(f->Name(), {{"_", "-"}}), f->Help(),
                          def.empty() ? "" : absl::StrCat(" (default: ", def, ")"));
  }
  return out;
}

}  // namespace halloc::cli
