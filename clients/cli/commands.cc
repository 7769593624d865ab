#include "clients/cli/commands.h"

#include <grp.h>
#include <pwd.h>
#include <sys/fsuid.h>
#include <unistd.h>

#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "clients/cli/args.h"
#include "clients/cli/output.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/metrics/prometheus.h"
#include "service/policy/policy.h"
#include "service/util/trusted_path.h"

namespace halloc::cli {
namespace {

constexpr size_t kMany = std::numeric_limits<size_t>::max();

absl::Status Hold(Session& s, const Call& call, size_t n) {
  call.out << std::flush;  // what the command printed, before the wait
  // With --json, stdout carries JSON only.
  std::ostream& note = call.options.json ? std::cerr : call.out;
  note << "holding " << n << " buffer(s) in session " << s.client().session_id()
       << "; Ctrl-C to release" << std::endl;
  WaitForStopSignal(absl::InfiniteDuration());
  return absl::OkStatus();
}

absl::Status CheckDescriptor(const Call& call) {
  return DescriptorFromOptions(call.options).status();
}

absl::Status CheckBufferId(const Call& call) { return ParseId(call.args[0], "buffer").status(); }

absl::Status Allocate(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(v1::BufferDescriptor d, DescriptorFromOptions(call.options));
  ASSIGN_OR_RETURN(std::vector<Buffer> buffers,
                   s.client().Allocate(d, call.options.count));
  v1::AllocateResponse listing;
  for (Buffer& b : buffers) {
    if (call.options.json) {
      *listing.add_buffers() = b.info();
    } else {
      PrintBuffer(call.out, b.info(), true);
    }
    const uint64_t id = b.id();
    s.held().insert_or_assign(id, std::move(b));
  }
  if (call.options.json) call.out << Json(listing);
  if (call.options.hold) return Hold(s, call, buffers.size());
  return absl::OkStatus();
}

// Maps `b` with the rights its fd should carry and checks that the next
// wider ones are refused.
absl::Status MapCheck(const Buffer& b, const Call& call) {
  const v1::CpuAccess granted = b.info().cpu_access();
  auto must_refuse = [&](Access a) -> absl::Status {
    if (!b.Map(a).ok()) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(
        "map-check: buffer ", b.id(), " maps ", a == Access::kRead ? "read" : "read-write",
        " although its cpu access is ", AccessName(granted)));
  };
  auto must_map = [&](Access a) -> absl::Status {
    ASSIGN_OR_RETURN(Mapping m, b.Map(a));
    const volatile unsigned char* p = m.as<const unsigned char>();
    (void)p[0];
    (void)p[m.size() - 1];
    return absl::OkStatus();
  };
  std::string result;
  switch (granted) {
    case v1::CPU_ACCESS_READ_WRITE:
      RETURN_IF_ERROR(must_map(Access::kReadWrite));
      result = absl::StrCat("mapped ", b.size(), " bytes read-write");
      break;
    case v1::CPU_ACCESS_READ:
      RETURN_IF_ERROR(must_map(Access::kRead));
      RETURN_IF_ERROR(must_refuse(Access::kReadWrite));
      result = absl::StrCat("mapped ", b.size(), " bytes read-only; read-write refused");
      break;
    case v1::CPU_ACCESS_NONE:
      RETURN_IF_ERROR(must_refuse(Access::kRead));
      result = "not mappable (cpu none), as granted";
      break;
    default:
      return absl::FailedPreconditionError("map-check: hallocd named no cpu access");
  }
  if (!call.options.json) call.out << "map-check: " << result << "\n";
  return absl::OkStatus();
}

absl::Status Import(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(Buffer b, s.client().Import(call.args[0]));
  if (call.options.json) {
    call.out << Json(b.info());
  } else {
    PrintBuffer(call.out, b.info(), true);
  }
  const uint64_t id = b.id();
  const Buffer& held = s.held().insert_or_assign(id, std::move(b)).first->second;
  if (call.options.map_check) RETURN_IF_ERROR(MapCheck(held, call));
  if (call.options.hold) return Hold(s, call, 1);
  return absl::OkStatus();
}

absl::Status List(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(std::vector<v1::BufferInfo> list, s.client().List(call.options.all));
  if (call.options.json) {
    v1::ListResponse r;
    r.mutable_buffers()->Assign(list.begin(), list.end());
    call.out << Json(r);
    return absl::OkStatus();
  }
  if (list.empty()) call.out << "no buffers\n";
  for (const v1::BufferInfo& b : list) PrintBuffer(call.out, b, false);
  return absl::OkStatus();
}

absl::Status Describe(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(const uint64_t id, ParseId(call.args[0], "buffer"));
  absl::StatusOr<v1::BufferInfo> info = s.client().Describe(id);
  if (absl::IsNotFound(info.status())) {
    // Not ours: look it up daemon-wide if we may.
    absl::StatusOr<std::vector<v1::BufferInfo>> all = s.client().List(true);
    for (size_t i = 0; all.ok() && i < all->size(); ++i) {
      if ((*all)[i].id() == id) info = (*all)[i];
    }
  }
  RETURN_IF_ERROR(info.status());
  if (call.options.json) {
    call.out << Json(*info);
  } else {
    PrintBuffer(call.out, *info, true);
  }
  return absl::OkStatus();
}

absl::Status Stats(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(v1::StatsResponse r, s.client().Stats());
  if (call.options.prometheus) {
    call.out << ToPrometheus(r);
  } else if (call.options.json) {
    call.out << Json(r);
  } else {
    PrintStats(call.out, r);
  }
  return absl::OkStatus();
}

absl::Status Dump(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(v1::DumpResponse r, s.client().Dump());
  if (call.options.json) {
    call.out << Json(r);
  } else {
    PrintDump(call.out, r);
  }
  return absl::OkStatus();
}

// Without a descriptor, supported lists the formats.
absl::Status CheckSupported(const Call& call) {
  const Options& o = call.options;
  return o.format.empty() && o.size == 0 ? absl::OkStatus() : CheckDescriptor(call);
}

absl::Status Supported(Session& s, const Call& call) {
  const Options& o = call.options;
  if (o.format.empty() && o.size == 0) {
    PrintFormats(call.out, o.json);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(v1::BufferDescriptor d, DescriptorFromOptions(o));
  ASSIGN_OR_RETURN(v1::IsSupportedResponse r, s.client().IsSupported(d, o.count));
  if (o.json) {
    call.out << Json(r);
  } else if (r.supported()) {
    PrintSupported(call.out, r);
  }
  return SupportStatus(r);
}

absl::Status Share(Session& s, const Call& call) {
  const Options& o = call.options;
  ASSIGN_OR_RETURN(const uint64_t id, ParseId(call.args[0], "buffer"));
  if (o.uid < -1 || o.uid > std::numeric_limits<uint32_t>::max()) {
    return UsageError(absl::StrCat("--uid ", o.uid, " is not a uid"));
  }
  if ((o.uid >= 0) == !o.client.empty()) {
    return UsageError("share: name the peer with --uid UID or --client NAME (one of them)");
  }
  ASSIGN_OR_RETURN(const v1::CpuAccess cpu, ParseAccess(o.access));
  ASSIGN_OR_RETURN(v1::Grant g, o.client.empty()
                                    ? s.client().Share(id, static_cast<uid_t>(o.uid), cpu)
                                    : s.client().ShareWithClient(id, o.client, cpu));
  if (o.json) {
    call.out << Json(g);
  } else {
    PrintGrant(call.out, g);
  }
  return absl::OkStatus();
}

absl::Status Release(Session& s, const Call& call) {
  std::vector<uint64_t> ids;
  for (const std::string& arg : call.args) {
    ASSIGN_OR_RETURN(const uint64_t id, ParseId(arg, "buffer"));
    ids.push_back(id);
  }
  RETURN_IF_ERROR(s.client().Release(ids));
  for (uint64_t id : ids) s.held().erase(id);
  if (!call.options.json) call.out << "released " << absl::StrJoin(call.args, " ") << "\n";
  return absl::OkStatus();
}

absl::Status Revoke(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(const uint64_t id, ParseId(call.args[0], "grant"));
  RETURN_IF_ERROR(s.client().Revoke(id));
  if (!call.options.json) call.out << "revoked grant " << id << "\n";
  return absl::OkStatus();
}

absl::Status SetMetadata(Session& s, const Call& call) {
  ASSIGN_OR_RETURN(const uint64_t id, ParseId(call.args[0], "buffer"));
  ASSIGN_OR_RETURN(const MetadataValue m, ParseMetadata(call.args[1], call.args.subspan(2)));
  ASSIGN_OR_RETURN(v1::BufferInfo info, s.client().SetMetadata(id, m.type, m.value));
  if (call.options.json) {
    call.out << Json(info);
  } else {
    PrintBuffer(call.out, info, true);
  }
  return absl::OkStatus();
}

absl::Status CheckWatch(const Call& call) {
  if (call.options.interval <= absl::ZeroDuration()) {
    return UsageError("watch: --interval must be positive");
  }
  return absl::OkStatus();
}

absl::Status Watch(Session& s, const Call& call) {
  const Options& o = call.options;
  RETURN_IF_ERROR(CheckWatch(call));
  // A terminal gets a refreshed screen; a pipe or file, one report after another.
  const bool clear = !o.json && ::isatty(STDOUT_FILENO) == 1;
  for (uint32_t n = 1;; ++n) {
    if (clear) {
      // hallocctl's own sequence, past SafeOutput (which would print it
      // as text): what came before is flushed through it first.
      static constexpr char kHomeAndClear[] = "\033[H\033[2J";
      call.out << std::flush;
      (void)!::write(STDOUT_FILENO, kHomeAndClear, sizeof(kHomeAndClear) - 1);
    }
    if (!o.json) {
      call.out << absl::StreamFormat(
          "--- %s at %s (every %s; Ctrl-C to stop)\n", o.dump ? "dump" : "stats",
          absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::Now(), absl::LocalTimeZone()),
          absl::FormatDuration(o.interval));
    }
    RETURN_IF_ERROR(o.dump ? Dump(s, call) : Stats(s, call));
    call.out << std::flush;
    // Nobody reads any more (a closed pipe, a full disk): main says so.
    if (!call.out) return absl::OkStatus();
    if (o.iterations != 0 && n >= o.iterations) return absl::OkStatus();
    if (WaitForStopSignal(o.interval)) return absl::OkStatus();
  }
}

absl::Status Help(Session&, const Call& call) {
  call.out << CommandsHelp();
  return absl::OkStatus();
}

using Scope = Command::Scope;

constexpr Command kCommands[] = {
    {"allocate",
     "(--size BYTES | --format F --width W --height H [--layers N]) [--usage U] "
     "[--count N] [--name NAME] [--hold] [--json]",
     "allocate buffers and print them with their layout", 0, 0, Scope::kAnywhere, Allocate,
     CheckDescriptor},
    {"import", "TOKEN [--map-check] [--hold] [--json]",
     "take the buffer a grant shares with you and print it; --map-check maps it\n"
     "with the grant's rights and checks that wider ones are refused",
     1, 1, Scope::kAnywhere, Import},
    {"list", "[--all] [--json]",
     "this session's buffers (--all: every live buffer with its holders; root\n"
     "and the daemon's uid)",
     0, 0, Scope::kAnywhere, List},
    {"describe", "ID [--json]",
     "one buffer: layout and metadata (any live buffer with --all rights)", 1, 1, Scope::kAnywhere,
     Describe, CheckBufferId},
    {"stats", "[--json|--prometheus]", "daemon-wide counters, denials per policy rule", 0, 0,
     Scope::kAnywhere, Stats},
    {"dump", "[--json]",
     "per client: buffers and bytes held, owned vs imported, and quota use\n"
     "(like Android's dmabuf_dump; root or daemon uid)",
     0, 0, Scope::kAnywhere, Dump},
    {"supported", "[descriptor flags] [--json]",
     "without a descriptor: the format table; with one: whether hallocd would\n"
     "allocate it, and the layout it would use",
     0, 0, Scope::kAnywhere, Supported, CheckSupported},
    {"watch", "[--dump] [--interval 1s] [--iterations N] [--json]",
     "print stats (or dump) again every --interval until Ctrl-C", 0, 0, Scope::kCommandLineOnly,
     Watch, CheckWatch},
    {"policy", "check FILE",
     "validate a policy file offline (no daemon needed; root judges exe\n"
     "paths as user hallocd, the unit's); errors are\n"
     "FILE:LINE:COLUMN: message",
     2, 2, Scope::kCommandLineOnly, nullptr},
    {"session", "", "run commands read from stdin, one per line, in this one session", 0, 0,
     Scope::kCommandLineOnly, nullptr},
    {"share", "ID (--uid UID | --client NAME) [--access none|read|read-write] [--json]",
     "grant a peer access to a buffer; prints the grant, its token last", 1, 1, Scope::kSessionOnly,
     Share},
    {"revoke", "GRANT", "withdraw a grant: no new import of it succeeds", 1, 1, Scope::kSessionOnly,
     Revoke},
    {"release", "ID...", "drop this session's hold on buffers", 1, kMany, Scope::kSessionOnly,
     Release},
    {"set-metadata",
     "ID dataspace VALUE | ID blend-mode none|premultiplied|coverage |\n"
     "               ID crop L,T,R,B... [--json]",
     "set a buffer's dataspace (decimal or 0x hex), blend mode, or crop (one\n"
     "rectangle per plane, in that plane's samples)",
     3, kMany, Scope::kSessionOnly, SetMetadata},
    {"help", "", "this list", 0, 0, Scope::kSessionOnly, Help},
};

}  // namespace

const Command* FindCommand(absl::string_view name) {
  for (const Command& c : kCommands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

absl::Status CheckCall(const Command& command, const Call& call) {
  if (command.check == nullptr) return absl::OkStatus();
  absl::Status s = command.check(call);
  // Whatever the check finds is the command line's fault: exit 2.
  return s.ok() || IsUsageError(s) ? s : UsageError(s.message());
}

absl::Status CheckCommand(const Command& command, size_t num_args, bool in_session) {
  if (in_session && command.scope == Scope::kCommandLineOnly) {
    return UsageError(absl::StrCat(command.name, " cannot run inside a session"));
  }
  if (!in_session && command.scope == Scope::kSessionOnly) {
    return UsageError(absl::StrCat(
        command.name,
        " acts on buffers this session holds, and each hallocctl process is its "
        "own session: run it inside `hallocctl session`"));
  }
  if (num_args < command.min_args || num_args > command.max_args) {
    return UsageError(absl::StrCat("usage: ", command.name, " ", command.synopsis,
                                   command.synopsis.empty() ? "(no arguments)" : ""));
  }
  return absl::OkStatus();
}

std::string CommandsHelp() {
  std::string out;
  for (const Command& c : kCommands) {
    absl::StrAppend(&out, "  ", c.name, c.synopsis.empty() ? "" : " ", c.synopsis,
                    c.scope == Scope::kSessionOnly ? "   (in a session)" : "", "\n      ",
                    absl::StrReplaceAll(c.summary, {{"\n", "\n      "}}), "\n");
  }
  return out;
}

std::optional<Judge> UnitUser() {
  struct passwd pw, *found = nullptr;
  char buf[4096];
  if (::getpwnam_r("hallocd", &pw, buf, sizeof(buf), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return Judge{pw.pw_uid, pw.pw_gid, pw.pw_name};
}

namespace {

// While it lives, this process looks up files as `judge`: this thread's
// filesystem ids (setfsuid), the process's supplementary groups (glibc's
// setgroups sets every thread's: the check runs before hallocctl starts
// any), and TrustedOwner counts its files as this process's own. Root only
// (CAP_SETUID, CAP_SETGID); ok() says whether it took.
class JudgingAs {
 public:
  explicit JudgingAs(const Judge& judge) {
    const int n = ::getgroups(0, nullptr);
    groups_.resize(n > 0 ? n : 0);
    if (n < 0 || ::getgroups(n, groups_.data()) != n) return;
    std::vector<gid_t> theirs(64);
    int count = static_cast<int>(theirs.size());
    if (::getgrouplist(judge.name.c_str(), judge.gid, theirs.data(), &count) < 0) {
      theirs.resize(count);  // it said how many there are
      if (::getgrouplist(judge.name.c_str(), judge.gid, theirs.data(), &count) < 0) count = 0;
    }
    if (count == 0) theirs = {judge.gid}, count = 1;
    if (::setgroups(count, theirs.data()) != 0) return;
    changed_groups_ = true;
    ::setfsgid(judge.gid);
    ::setfsuid(judge.uid);
    // setfsuid says the previous id, and fails silently: ask again.
    ok_ = static_cast<uid_t>(::setfsuid(-1)) == judge.uid &&
          static_cast<gid_t>(::setfsgid(-1)) == judge.gid;
    TrustOwnUidAs(judge.uid);
  }
  ~JudgingAs() {
    TrustOwnUidAs(-1);
    ::setfsuid(::geteuid());
    ::setfsgid(::getegid());
    if (changed_groups_) (void)::setgroups(groups_.size(), groups_.data());
  }
  bool ok() const { return ok_; }

 private:
  std::vector<gid_t> groups_;
  bool changed_groups_ = false;
  bool ok_ = false;
};

}  // namespace

int PolicyCheck(const std::string& file, std::ostream& out, std::ostream& err,
                const std::optional<Judge>& as) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Load(file, Policy::Writer::kAnyone);
  if (!p.ok()) {
    err << p.status().message() << "\n";
    return kExitRefused;
  }
  out << file << ": OK, " << (*p)->rules().size() << " client rules:";
  for (const Rule& r : (*p)->rules()) out << " " << r.name;
  out << "\n";
  std::optional<JudgingAs> judging;
  std::string whose = "this user";
  if (as.has_value() && as->uid != ::geteuid()) {
    if (::geteuid() == 0) {
      judging.emplace(*as);
      if (judging->ok()) {
        whose = absl::StrCat("user ", as->name);
        err << "note: judged as user " << as->name << " (uid " << as->uid
            << "), as hallocd.service runs hallocd\n";
      } else {
        judging.reset();
        err << "note: judged as root: cannot look at files as user " << as->name << " (uid "
            << as->uid << ") here, as hallocd.service runs hallocd\n";
      }
    } else {
      err << "note: judged as uid " << ::geteuid() << ", not as user " << as->name
          << ", which hallocd.service runs hallocd as: run this as root for its judgement\n";
    }
  }
  for (const std::string& problem : (*p)->ExeRuleProblems()) err << "note: " << problem << "\n";
  // Said wherever the file is checked: it may be installed elsewhere.
  if (const std::vector<std::string> open = (*p)->ExeRulesOpenToAnyUid(); !open.empty()) {
    err << "note: " << absl::StrJoin(open, ", ")
        << " match by executable alone: where unprivileged users may create user namespaces "
           "(Debian's default), any local user can pass for an executable it can open; add "
           "uids or gids (README, \"Security\")\n";
  }
  // A draft passes whoever wrote it; hallocd takes only a file root or its
  // own user could have written (Policy::Writer::kTrusted).
  if (absl::Status trusted = Policy::Load(file).status(); !trusted.ok()) {
    err << "note: hallocd running as " << whose
        << " would not read it where it is: " << trusted.message() << "\n";
  }
  return kExitOk;
}

}  // namespace halloc::cli
