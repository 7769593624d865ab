// hallocctl: command-line client of hallocd. Run `hallocctl --help`.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/client.h"
#include "service/layout/format.h"
#include "service/layout/layout.h"
#include "service/layout/usage.h"
#include "service/policy/policy.h"

ABSL_FLAG(std::string, control_socket, "",
          "hallocd's gRPC socket (default: $HALLOC_CONTROL_SOCKET, else "
          "$XDG_RUNTIME_DIR/halloc/control.sock or /run/halloc/control.sock)");
ABSL_FLAG(std::string, broker_socket, "",
          "hallocd's broker socket (default: $HALLOC_BROKER_SOCKET, else next "
          "to the control socket's default)");
ABSL_FLAG(uint64_t, size, 0, "allocate/supported: blob size in bytes");
ABSL_FLAG(std::string, format, "",
          "allocate/supported: DRM format name (NV12, ARGB8888, YV12, P010, "
          "...; see `hallocctl supported`)");
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
          "allocate: keep the buffers (and this session) until Ctrl-C; "
          "without it they are released when hallocctl exits");
ABSL_FLAG(bool, all, false, "list: every live buffer (root or daemon uid)");

namespace {

constexpr char kUsage[] = R"(talk to hallocd, the halloc buffer allocator.

Usage: hallocctl [flags] COMMAND [ARGS]

Commands:
  allocate     allocate buffers and print them with their layout
                 hallocctl allocate --size 1048576
                 hallocctl allocate --format NV12 --width 1920 --height 1080 \
                     --usage camera_output,composer_overlay [--count 4] [--hold]
  list         list this session's buffers (--all: every live buffer, with
               holders; for root and the daemon's uid)
  describe ID  describe one buffer (any live buffer with --all rights)
  stats        daemon-wide counters, denials per policy rule
  dump         per client: buffers and bytes held, owned vs imported, and
               quota use (like Android's dmabuf_dump; root or daemon uid)
  policy check FILE
               validate a policy file offline (no daemon needed); errors
               are FILE:LINE:COLUMN: message
  supported    without a descriptor: the format table; with one
               (--size or --format/--width/--height/--usage): whether hallocd
               would allocate it, and the layout it would use

Every hallocctl run is its own client session: buffers it allocates are
released when it exits unless --hold keeps it running.

Exit codes: 0 ok, 1 hallocd refused (the message says why and which rule),
2 bad command line, 3 cannot reach hallocd.
)";

int Fail(const absl::Status& status) {
  std::cerr << "hallocctl: " << status << "\n";
  return 1;
}

absl::StatusOr<halloc::v1::BufferDescriptor> DescriptorFromFlags() {
  halloc::v1::BufferDescriptor d;
  d.set_name(absl::GetFlag(FLAGS_name));
  const std::string usage = absl::GetFlag(FLAGS_usage);
  if (!usage.empty()) {
    absl::StatusOr<uint64_t> bits = halloc::usage::Parse(usage);
    if (!bits.ok()) return bits.status();
    d.set_usage(*bits);
  }
  const std::string format = absl::GetFlag(FLAGS_format);
  if (!format.empty() && absl::GetFlag(FLAGS_size) != 0) {
    return absl::InvalidArgumentError("give either --size or --format, not both");
  }
  if (!format.empty()) {
    absl::StatusOr<uint32_t> fourcc = halloc::format::ParseName(format);
    if (!fourcc.ok()) return fourcc.status();
    halloc::v1::ImageDescriptor* image = d.mutable_image();
    image->set_format(*fourcc);
    image->set_width(absl::GetFlag(FLAGS_width));
    image->set_height(absl::GetFlag(FLAGS_height));
    image->set_layer_count(absl::GetFlag(FLAGS_layers));
  } else if (absl::GetFlag(FLAGS_size) != 0) {
    d.set_size(absl::GetFlag(FLAGS_size));
  } else {
    return absl::InvalidArgumentError(
        "need a descriptor: --size BYTES, or --format F --width W --height H");
  }
  return d;
}

const char* AccessName(halloc::v1::CpuAccess a) {
  switch (a) {
    case halloc::v1::CPU_ACCESS_NONE: return "none";
    case halloc::v1::CPU_ACCESS_READ: return "read";
    case halloc::v1::CPU_ACCESS_READ_WRITE: return "read-write";
    default: return "-";
  }
}

void PrintInfo(const halloc::v1::BufferInfo& b, bool detail) {
  absl::PrintF("buffer %d  %-20s %10d bytes  %-6s owner uid %d  cpu %s  usage %s\n",
               b.id(), b.name(), b.size(), b.backend(), b.owner_uid(),
               AccessName(b.cpu_access()),
               halloc::usage::ToString(b.usage()));
  for (const auto& h : b.holders()) {
    absl::PrintF("    held by session %d (pid %d, uid %d)%s\n", h.session_id(),
                 h.pid(), h.uid(), h.owner() ? " [owner]" : "");
  }
  if (detail && b.layout().planes_size() > 0) {
    std::cout << halloc::layout::Describe(b.layout());
  }
}

int Allocate(halloc::Client& client) {
  absl::StatusOr<halloc::v1::BufferDescriptor> d = DescriptorFromFlags();
  if (!d.ok()) {
    std::cerr << "hallocctl allocate: " << d.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::vector<halloc::Buffer>> bufs =
      client.Allocate(*d, absl::GetFlag(FLAGS_count));
  if (!bufs.ok()) return Fail(bufs.status());
  for (const halloc::Buffer& b : *bufs) PrintInfo(b.info(), true);
  if (absl::GetFlag(FLAGS_hold)) {
    std::cout << "holding " << bufs->size()
              << " buffer(s) in session " << client.session_id()
              << "; Ctrl-C to release" << std::endl;
    pause();
  }
  return 0;
}

int List(halloc::Client& client) {
  absl::StatusOr<std::vector<halloc::v1::BufferInfo>> list =
      client.List(absl::GetFlag(FLAGS_all));
  if (!list.ok()) return Fail(list.status());
  if (list->empty()) std::cout << "no buffers\n";
  for (const auto& b : *list) PrintInfo(b, false);
  return 0;
}

int Describe(halloc::Client& client, const std::string& arg) {
  uint64_t id;
  if (!absl::SimpleAtoi(arg, &id)) {
    std::cerr << "hallocctl describe: '" << arg << "' is not a buffer id\n";
    return 2;
  }
  absl::StatusOr<halloc::v1::BufferInfo> info = client.Describe(id);
  if (info.status().code() == absl::StatusCode::kNotFound) {
    // Not ours: look it up daemon-wide if we may.
    absl::StatusOr<std::vector<halloc::v1::BufferInfo>> all = client.List(true);
    if (all.ok()) {
      for (const auto& b : *all) {
        if (b.id() == id) info = b;
      }
    }
  }
  if (!info.ok()) return Fail(info.status());
  PrintInfo(*info, true);
  return 0;
}

int Stats(halloc::Client& client) {
  absl::StatusOr<halloc::v1::StatsResponse> s = client.Stats();
  if (!s.ok()) return Fail(s.status());
  absl::PrintF("live buffers  %d\nlive bytes    %d\nsessions      %d\n"
               "grants        %d\nallocations   %d (since start)\n"
               "releases      %d (since start)\n",
               s->live_buffers(), s->live_bytes(), s->sessions(), s->grants(),
               s->allocations_total(), s->releases_total());
  for (const auto& b : s->backends()) {
    absl::PrintF("backend %-8s %d buffers, %d bytes\n", b.name(),
                 b.live_buffers(), b.live_bytes());
  }
  absl::PrintF("policy        %s (%d failed reloads)\n", s->policy_source(),
               s->policy_reload_failures());
  for (const auto& [rule, n] : s->denials_by_rule()) {
    absl::PrintF("denials       %d by rule '%s'\n", n, rule);
  }
  return 0;
}

int Dump(halloc::Client& client) {
  absl::StatusOr<halloc::v1::DumpResponse> d = client.Dump();
  if (!d.ok()) return Fail(d.status());
  absl::PrintF("%-8s %-7s %-6s %-12s %14s %14s  %s\n", "session", "pid", "uid",
               "client", "owned", "imported", "exe");
  for (const auto& s : d->sessions()) {
    absl::PrintF("%-8d %-7d %-6d %-12s %4d / %7dK %4d / %7dK  %s\n", s.session_id(),
                 s.pid(), s.uid(), s.client().empty() ? "-" : s.client(),
                 s.owned_buffers(), s.owned_bytes() / 1024, s.imported_buffers(),
                 s.imported_bytes() / 1024, s.exe());
  }
  if (d->clients_size() > 0) std::cout << "\nquota use (owned, all sessions):\n";
  for (const auto& c : d->clients()) {
    absl::PrintF("  %-12s uid %-6d %d buffers of %s, %d bytes of %s\n", c.client(),
                 c.uid(), c.buffers(),
                 c.quota_buffers() ? absl::StrCat(c.quota_buffers()) : "unlimited",
                 c.bytes(), c.quota_bytes() ? absl::StrCat(c.quota_bytes()) : "unlimited");
  }
  return 0;
}

int PolicyCheck(const std::string& file) {
  absl::StatusOr<std::shared_ptr<const halloc::Policy>> p = halloc::Policy::Load(file);
  if (!p.ok()) {
    std::cerr << p.status().message() << "\n";
    return 1;
  }
  std::cout << file << ": OK, " << (*p)->rules().size() << " client rules:";
  for (const halloc::Rule& r : (*p)->rules()) std::cout << " " << r.name;
  std::cout << "\n";
  return 0;
}

int Supported(halloc::Client& client) {
  if (absl::GetFlag(FLAGS_format).empty() && absl::GetFlag(FLAGS_size) == 0) {
    std::cout << "formats (DRM fourcc, linear modifier):\n";
    for (const halloc::format::FormatInfo& f : halloc::format::All()) {
      absl::PrintF("  %-14s 0x%08x  %d plane(s)%s\n", f.name, f.fourcc,
                   f.num_planes, f.android_yv12 ? "  (Android YV12 layout)" : "");
    }
    std::cout << "  BLOB           size only (--size)\n";
    return 0;
  }
  absl::StatusOr<halloc::v1::BufferDescriptor> d = DescriptorFromFlags();
  if (!d.ok()) {
    std::cerr << "hallocctl supported: " << d.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<halloc::v1::IsSupportedResponse> r =
      client.IsSupported(*d, absl::GetFlag(FLAGS_count));
  if (!r.ok()) return Fail(r.status());
  if (!r->supported()) {
    absl::Status why(static_cast<absl::StatusCode>(r->code()), r->reason());
    std::cout << "not supported: " << why << "\n";
    return 1;
  }
  std::cout << "supported on backend " << r->backend() << "\n";
  if (r->layout().planes_size() > 0) std::cout << halloc::layout::Describe(r->layout());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "hallocctl");
  };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = args[1];
  if (cmd == "policy") {
    if (args.size() != 4 || std::string(args[2]) != "check") {
      std::cerr << "hallocctl: usage: hallocctl policy check FILE\n";
      return 2;
    }
    return PolicyCheck(args[3]);
  }
  const bool known = cmd == "allocate" || cmd == "list" || cmd == "describe" ||
                     cmd == "stats" || cmd == "supported" || cmd == "dump";
  if (!known || (cmd == "describe") != (args.size() == 3) ||
      (cmd != "describe" && args.size() != 2)) {
    std::cerr << "hallocctl: bad command line; see hallocctl --help\n";
    return 2;
  }
  signal(SIGINT, [](int) {});  // let --hold's pause() return on Ctrl-C
  halloc::ConnectOptions opts;
  opts.control_socket = absl::GetFlag(FLAGS_control_socket);
  opts.broker_socket = absl::GetFlag(FLAGS_broker_socket);
  absl::StatusOr<halloc::Client> client = halloc::Client::Connect(opts);
  if (!client.ok()) {
    std::cerr << "hallocctl: cannot reach hallocd: " << client.status().message()
              << "\n";
    return 3;
  }
  if (cmd == "allocate") return Allocate(*client);
  if (cmd == "list") return List(*client);
  if (cmd == "describe") return Describe(*client, args[2]);
  if (cmd == "stats") return Stats(*client);
  if (cmd == "dump") return Dump(*client);
  return Supported(*client);
}
