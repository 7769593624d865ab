#include "service/policy/policy.h"

#include <fcntl.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/usage.h"
#include "kernel/uapi/halloc_heap.h"
#include "service/backend/registry.h"
#include "service/util/fd_limit.h"
#include "service/util/trusted_path.h"

namespace halloc {
namespace {

using ::google::protobuf::TextFormat;

class Collector : public google::protobuf::io::ErrorCollector {
 public:
  explicit Collector(std::string source) : source_(std::move(source)) {}
  // Protobuf's messages quote the file's own text (`got: "..."`), which
  // may hold escape sequences or newlines: escaped, as the rest of this
  // file's errors quote what the file says (Quote), since they reach the
  // log on a reload and the terminal of whoever checks the file.
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back(
        absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", absl::CHexEscape(message)));
  }
  void AddWarning(int line, int column, const std::string& message) override {
    AddError(line, column, message);
  }
  std::vector<std::string>& errors() { return errors_; }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

// A string from the policy file inside an error message: escaped, so that
// one error stays one line ("FILE:LINE:COL: ...") whatever the file holds.
std::string Quote(absl::string_view s) { return absl::CHexEscape(s); }

// A compiled rule's name as an error message names it.
std::string QuotedName(const Rule& r) { return Quote(r.name.empty() ? "(unnamed)" : r.name); }

bool ValidName(absl::string_view n) {
  if (n.empty() || n.size() > kMaxClientNameBytes) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// Whether rule `a` matches every session rule `b` matches: each of `a`'s
// criteria holds wherever all of `b`'s do (a rule with none matches
// nothing).
bool Covers(const Rule& a, const Rule& b) {
  if (a.any) return true;
  if (b.any || (a.uids.empty() && a.gids.empty() && a.exe.empty())) return false;
  const auto within = [](const auto& inner, const auto& outer) {
    return !inner.empty() && std::all_of(inner.begin(), inner.end(), [&](const auto& x) {
      return std::find(outer.begin(), outer.end(), x) != outer.end();
    });
  };
  return (a.uids.empty() || within(b.uids, a.uids)) && (a.gids.empty() || within(b.gids, a.gids)) &&
         (a.exe.empty() || a.exe == b.exe);
}

// The earlier rules that together match every session `b` matches (empty:
// they do not): each (uid, gid) pair `b` names, with its exe, is matched
// by one of them (Covers of `b` narrowed to that pair; a session has one
// uid and one gid). Only uids and gids are split, and only up to
// kMaxSplit pairs; exes are compared as paths (ExeRuleProblems compares
// the files).
std::vector<const Rule*> CoverTogether(const std::vector<Rule>& earlier, const Rule& b) {
  constexpr size_t kMaxSplit = 4096;
  const size_t nu = std::max<size_t>(b.uids.size(), 1), ng = std::max<size_t>(b.gids.size(), 1);
  if (b.any || nu * ng > kMaxSplit) return {};
  std::vector<const Rule*> by;
  for (size_t i = 0; i < nu; ++i) {
    for (size_t j = 0; j < ng; ++j) {
      Rule part;
      part.exe = b.exe;
      if (!b.uids.empty()) part.uids = {b.uids[i]};
      if (!b.gids.empty()) part.gids = {b.gids[j]};
      auto a = std::find_if(earlier.begin(), earlier.end(),
                            [&](const Rule& a) { return Covers(a, part); });
      if (a == earlier.end()) return {};
      if (std::find(by.begin(), by.end(), &*a) == by.end()) by.push_back(&*a);
    }
  }
  std::sort(by.begin(), by.end());  // in the policy's order (one vector)
  return by;
}

// What of rule `a`'s match makes it cover another (Covers): "any: true",
// or its criteria ("uids 1001, 1002").
std::string CoveringCriteria(const Rule& a) {
  if (a.any) return "every session (any: true)";
  std::vector<std::string> parts;
  if (!a.uids.empty()) parts.push_back(absl::StrCat("uids ", absl::StrJoin(a.uids, ", ")));
  if (!a.gids.empty()) parts.push_back(absl::StrCat("gids ", absl::StrJoin(a.gids, ", ")));
  if (!a.exe.empty()) parts.push_back(absl::StrCat("exe '", Quote(a.exe), "'"));
  return absl::StrCat("every session it matches (", absl::StrJoin(parts, "; "), ")");
}

// Checks and compiles rule `i`, appending "source:line:col: message" errors.
// `earlier`: the rules before it.
Rule Compile(const v1::ClientRule& r, int i, const TextFormat::ParseInfoTree* tree,
             const std::string& source, const std::vector<Rule>& earlier,
             std::vector<std::string>* errors) {
  const auto* desc = v1::ClientRule::descriptor();
  auto where = [&](const char* field, int index = -1) {
    const TextFormat::ParseInfoTree* rule_tree =
        tree ? tree->GetTreeForNested(v1::Policy::descriptor()->FindFieldByName("clients"), i)
             : nullptr;
    google::protobuf::TextFormat::ParseLocation loc;
    if (rule_tree != nullptr) loc = rule_tree->GetLocation(desc->FindFieldByName(field), index);
    if (loc.line < 0 && tree != nullptr) {
      loc = tree->GetLocation(v1::Policy::descriptor()->FindFieldByName("clients"), i);
    }
    return loc.line >= 0 ? absl::StrCat(source, ":", loc.line + 1, ":", loc.column + 1)
                         : absl::StrCat(source, ": clients[", i, "]");
  };
  Rule rule;
  rule.name = r.name();
  if (!ValidName(r.name())) {
    errors->push_back(absl::StrCat(where("name"), ": client name '", Quote(r.name()),
                                   "' must be 1-63 characters of [a-z0-9_-]"));
  }
  const v1::ClientMatch& m = r.match();
  rule.uids.assign(m.uids().begin(), m.uids().end());
  rule.gids.assign(m.gids().begin(), m.gids().end());
  rule.exe = m.exe();
  rule.any = m.any();
  if (!m.any() && m.uids().empty() && m.gids().empty() && m.exe().empty()) {
    errors->push_back(absl::StrCat(where("match"), ": client '", Quote(r.name()),
                                   "' has no match criteria (uids, gids, exe or any)"));
  }
  if (m.any() && (!m.uids().empty() || !m.gids().empty() || !m.exe().empty())) {
    // Read as "all criteria hold", `any` beside others would be a no-op;
    // read as a catch-all, the others would be ignored. Neither is meant.
    errors->push_back(absl::StrCat(where("match"), ": client '", Quote(r.name()),
                                   "': 'any: true' matches every session; give it alone, "
                                   "or drop it and let uids, gids and exe decide"));
  }
  // The first rule that matches decides: one whose sessions an earlier
  // rule all matches is dead, and a reader would take it for the rule of
  // the sessions it names (a uid's rule, then an exe rule for one of that
  // uid's programs, say).
  // Several rules may do it together (uids 1001, then 1002, then both).
  auto one = std::find_if(earlier.begin(), earlier.end(),
                          [&](const Rule& before) { return Covers(before, rule); });
  if (one != earlier.end()) {
    const Rule& before = *one;
    errors->push_back(
        absl::StrCat(where("match"), ": client '", Quote(r.name()), "' can never match: client '",
                     QuotedName(before), "' before it matches ", CoveringCriteria(before),
                     ", and the first rule that matches decides; ",
                     before.any ? "put catch-alls last" : "put the narrower rule first"));
  } else if (std::vector<const Rule*> by = CoverTogether(earlier, rule); !by.empty()) {
    std::vector<std::string> names;
    for (const Rule* b : by) {
      names.push_back(absl::StrCat("'", QuotedName(*b), "'"));
    }
    errors->push_back(absl::StrCat(
        where("match"), ": client '", Quote(r.name()), "' can never match: clients ",
        absl::StrJoin(names, ", "),
        " before it together match every session it matches (each of its uids and gids), and "
        "the first rule that matches decides; put the narrower rule first"));
  }
  if (!m.exe().empty() && m.exe()[0] != '/') {
    errors->push_back(absl::StrCat(where("match"), ": exe '", Quote(m.exe()),
                                   "' must be an absolute path"));
  }
  for (int u = 0; u < r.usages_size(); ++u) {
    if (r.usages(u) == "*") {
      rule.usage_mask |= ~usage::kReservedMask;
      continue;
    }
    absl::StatusOr<uint64_t> bits = usage::Parse(r.usages(u));
    if (!bits.ok()) {
      errors->push_back(absl::StrCat(where("usages", u), ": ", Quote(bits.status().message())));
    } else {
      rule.usage_mask |= *bits;
    }
  }
  rule.heaps.assign(r.heaps().begin(), r.heaps().end());
  const std::vector<std::string> known = KnownHeaps();
  for (int h = 0; h < r.heaps_size(); ++h) {
    if (r.heaps(h) == "*" ||
        std::find(known.begin(), known.end(), r.heaps(h)) != known.end()) {
      continue;
    }
    const std::string served = HeapOfBackend(r.heaps(h));
    if (!served.empty()) {  // a backend's name, e.g. memfd-pool
      errors->push_back(absl::StrCat(where("heaps", h), ": '", r.heaps(h),
                                     "' is a backend; its buffers come from heap '",
                                     served, "': name that"));
    } else {
      errors->push_back(absl::StrCat(where("heaps", h), ": unknown heap '", Quote(r.heaps(h)),
                                     "'; known: *, ", absl::StrJoin(known, ", ")));
    }
  }
  rule.max_buffer_bytes = r.max_buffer_bytes();
  rule.quota_bytes = r.quota_bytes();
  rule.quota_buffers = r.quota_buffers();
  // Unset is NONE (what is not granted is denied); a number no right
  // has is an error, not some right.
  if (r.max_cpu_access() == v1::CPU_ACCESS_UNSPECIFIED) {
    rule.max_cpu = CpuAccess::kNone;
  } else if (absl::StatusOr<CpuAccess> cpu = FromProto(r.max_cpu_access()); cpu.ok()) {
    rule.max_cpu = *cpu;
  } else {
    errors->push_back(absl::StrCat(where("max_cpu_access"), ": ", cpu.status().message()));
  }
  rule.attach_devices.assign(r.attach_devices().begin(), r.attach_devices().end());
  // Each a driver name as the kernel keeps one in a view (at most
  // HALLOC_MAX_DRIVERS of them), or "*": anything else would be refused at
  // every allocation, after its memory was made.
  int drivers = 0, first_too_many = -1;
  for (int d = 0; d < r.attach_devices_size(); ++d) {
    const std::string& name = r.attach_devices(d);
    if (name == "*") continue;
    if (++drivers == HALLOC_MAX_DRIVERS + 1) first_too_many = d;
    const bool valid = !name.empty() && name.size() < HALLOC_NAME_LEN &&
                       std::all_of(name.begin(), name.end(), [](char c) {
                         return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                                c == '-' || c == '.';
                       });
    if (!valid) {
      errors->push_back(absl::StrCat(where("attach_devices", d), ": driver name '", Quote(name),
                                     "' must be 1-", HALLOC_NAME_LEN - 1,
                                     " characters of [A-Za-z0-9_.-] (or \"*\")"));
    }
  }
  if (drivers > HALLOC_MAX_DRIVERS) {
    errors->push_back(absl::StrCat(where("attach_devices", first_too_many), ": client '",
                                   Quote(r.name()),
                                   "' names ", drivers, " drivers; at most ", HALLOC_MAX_DRIVERS,
                                   " (what a kernel view holds), or \"*\""));
  }
  rule.share_to.assign(r.share_to().begin(), r.share_to().end());
  rule.receive_from.assign(r.receive_from().begin(), r.receive_from().end());
  return rule;
}

}  // namespace

const std::string& ExePath::str() const {
  static const std::string* const kEmpty = new std::string();
  return path_ ? *path_ : *kEmpty;
}

std::optional<FileId> FileIdOf(const std::string& path) {
  // Device and inode only, as the kernel has them: never asks the file's
  // filesystem (a client's executable on a FUSE mount it serves would
  // otherwise hold the broker thread for as long as it left a getattr
  // unanswered).
  struct statx stx;
  if (::statx(AT_FDCWD, path.c_str(), AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, STATX_INO, &stx) != 0) {
    return std::nullopt;
  }
  return FileId{makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino};
}

// Reads uid, gid and exe_file alone: Policy::JudgesAlike compares those.
bool Rule::Matches(const Identity& id) const {
  if (!uids.empty() && std::find(uids.begin(), uids.end(), id.uid) == uids.end()) {
    return false;
  }
  if (!gids.empty() && std::find(gids.begin(), gids.end(), id.gid) == gids.end()) {
    return false;
  }
  // The rule's file is looked up at each decision, so a binary replaced by
  // an upgrade matches again without a reload.
  if (!exe.empty() && (!id.exe_file || FileIdOf(exe) != id.exe_file)) return false;
  return any || !uids.empty() || !gids.empty() || !exe.empty();
}

bool Rule::AllowsHeap(absl::string_view heap) const {
  return std::find(heaps.begin(), heaps.end(), "*") != heaps.end() ||
         std::find(heaps.begin(), heaps.end(), heap) != heaps.end();
}

bool Rule::AnyDevice() const {
  return std::find(attach_devices.begin(), attach_devices.end(), "*") != attach_devices.end();
}

bool ListAdmits(const std::vector<std::string>& list, absl::string_view name,
                uid_t uid, uid_t self_uid) {
  for (const std::string& entry : list) {
    if (entry == "*" || entry == name) return true;
    if (entry == "@same_uid" && uid == self_uid) return true;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::Parse(
    absl::string_view text, absl::string_view source) {
  v1::Policy proto;
  TextFormat::Parser parser;
  Collector collector{std::string(source)};
  TextFormat::ParseInfoTree tree;
  parser.RecordErrorsTo(&collector);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(std::string(text), &proto)) {
    return absl::InvalidArgumentError(absl::StrJoin(collector.errors(), "\n"));
  }
  auto policy = std::make_shared<Policy>();
  policy->source_ = std::string(source);
  std::vector<std::string> errors;
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < proto.clients_size(); ++i) {
    Rule rule = Compile(proto.clients(i), i, &tree, policy->source_, policy->rules_, &errors);
    if (!names.insert(rule.name).second) {
      errors.push_back(absl::StrCat(source, ": clients[", i, "]: duplicate client name '",
                                    Quote(rule.name), "'"));
    }
    policy->matches_exe_ |= !rule.exe.empty();
    policy->rules_.push_back(std::move(rule));
  }
  // Every name a share list mentions must exist.
  for (const Rule& rule : policy->rules_) {
    for (const auto* list : {&rule.share_to, &rule.receive_from}) {
      for (const std::string& n : *list) {
        if (n != "*" && n != "@same_uid" && !names.contains(n)) {
          errors.push_back(absl::StrCat(source, ": client '", Quote(rule.name),
                                        "' names unknown client '", Quote(n), "'"));
        }
      }
    }
  }
  if (proto.clients_size() == 0) {
    errors.push_back(absl::StrCat(
        source, ": no client rules: every request would be denied (write one "
                "rule that grants nothing if that is what you want)"));
  }
  policy->max_sessions_per_uid_ = proto.sessions().max_per_uid();
  policy->max_sessions_ = proto.sessions().max_total();
  if (proto.sessions().connects_per_second() != 0) {
    policy->connects_per_second_ = proto.sessions().connects_per_second();
  }
  // Only as written: a total alone (per-uid left to its default, 256) is
  // a natural thing to write and is taken as it comes.
  if (policy->max_sessions_ != 0 && policy->max_sessions_per_uid_ > policy->max_sessions_) {
    errors.push_back(absl::StrCat(source, ": sessions.max_per_uid (", policy->max_sessions_per_uid_,
                                  ") is above sessions.max_total (", policy->max_sessions_,
                                  "): one uid could take every connection"));
  }
  if (!errors.empty()) return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
  return std::shared_ptr<const Policy>(std::move(policy));
}

std::vector<std::string> Policy::ExeRulesOpenToAnyUid() const {
  std::vector<std::string> names;
  for (const Rule& r : rules_) {
    if (!r.exe.empty() && r.uids.empty() && r.gids.empty()) names.push_back(r.name);
  }
  return names;
}

std::vector<std::string> Policy::ExeRuleProblems() const {
  std::vector<std::string> problems;
  for (auto it = rules_.begin(); it != rules_.end(); ++it) {
    const Rule& r = *it;
    if (r.exe.empty()) continue;
    const std::string what = absl::StrCat("client '", Quote(r.name), "': exe '", Quote(r.exe), "'");
    // Parse compares exes as paths; a rule matches by file, and two paths
    // may name one (/bin/cam and /usr/bin/cam on a merged /usr).
    const std::optional<FileId> file = FileIdOf(r.exe);
    for (auto before = rules_.begin(); file && before != it; ++before) {
      if (before->exe.empty() || before->exe == r.exe) continue;
      Rule same = *before;
      same.exe = r.exe;
      if (Covers(same, r) && FileIdOf(before->exe) == file) {
        problems.push_back(absl::StrCat(
            what, " is the file client '", Quote(before->name), "''s exe '", Quote(before->exe),
            "' names, and that rule before it matches every session it would: it matches "
            "nothing while they are one file"));
        break;
      }
    }
    struct stat st;
    if (::stat(r.exe.c_str(), &st) != 0) {
      if (errno == EACCES) {
        // Under the shipped unit hallocd has no CAP_DAC_READ_SEARCH: a
        // home directory of mode 0700 on the way is closed to it.
        problems.push_back(absl::StrCat(
            what, ": ", std::strerror(errno),
            ": a directory on the way is closed to this process, so it matches nothing"));
      } else {
        problems.push_back(absl::StrCat(what, ": ", std::strerror(errno),
                                        ": it matches nothing until that file exists"));
      }
      continue;
    }
    // Looked up again at each decision: whoever may change a directory on
    // the way picks the file that matches (or mounts over it, and holds
    // the lookup up).
    if (absl::StatusOr<UniqueFd> trusted = OpenTrusted(r.exe, O_PATH);
        absl::IsFailedPrecondition(trusted.status())) {
      problems.push_back(absl::StrCat(
          what, " is reached through what another user may change (", trusted.status().message(),
          "): they choose the file it matches, or stall hallocd's lookup of it at each "
          "decision; name a path only root may change"));
    } else if (struct stat file;
               trusted.ok() && ::fstat(trusted->get(), &file) == 0 &&
               (!TrustedOwner(file.st_uid) || OthersMayWrite(trusted->get(), file))) {
      problems.push_back(absl::StrCat(what, " is a file another user may change (its owner, uid ",
                                      file.st_uid,
                                      ", or others may write it): any program they "
                                      "put in it matches"));
    }
    if (!S_ISREG(st.st_mode)) {
      problems.push_back(absl::StrCat(what, " is not a regular file: it matches nothing"));
      continue;
    }
    // Only a regular file is opened (never a FIFO or a device).
    UniqueFd fd(::open(r.exe.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    char head[2] = {};
    if (fd && ::read(fd.get(), head, sizeof(head)) == 2 && head[0] == '#' && head[1] == '!') {
      problems.push_back(absl::StrCat(
          what,
          " is a script: a process running it executes its interpreter, which "
          "/proc/PID/exe names, so it matches nothing; name the interpreter, with uids "
          "or gids"));
    }
  }
  return problems;
}

std::vector<std::string> Policy::BackendProblems(const Backend& backend) const {
  std::vector<std::string> problems;
  for (const Rule& r : rules_) {
    const std::string what = absl::StrCat("client '", Quote(r.name), "'");
    // An empty list is a rule made to receive only; one naming other heaps
    // was written for another hallocd.
    if (!r.heaps.empty() && !r.AllowsHeap(backend.name())) {
      problems.push_back(absl::StrCat(what, ": heaps [", Quote(absl::StrJoin(r.heaps, ", ")),
                                      "] do not name backend '", backend.name(),
                                      "' hallocd runs: every Allocate it makes is denied"));
    }
    bool enforceable = false;
    for (CpuAccess a : {CpuAccess::kNone, CpuAccess::kRead, CpuAccess::kReadWrite}) {
      if (!Wider(a, r.max_cpu) && backend.CanEnforce(a)) enforceable = true;
    }
    if (!enforceable) {
      problems.push_back(absl::StrCat(
          what, ": backend '", backend.name(), "' cannot enforce max_cpu_access ",
          CpuAccessName(r.max_cpu),
          " nor anything narrower: its Allocates and shares to it fail FAILED_PRECONDITION"));
    } else if (static const uid_t self = ::geteuid();
               r.max_cpu != CpuAccess::kReadWrite && backend.CanEnforce(r.max_cpu) &&
               !backend.CanEnforceFor(r.max_cpu, {self}) &&
               (r.any || r.uids.empty() ||
                std::find(r.uids.begin(), r.uids.end(), self) != r.uids.end())) {
      // A rule hallocd's own uid may match (a hallocd run by a user): one
      // naming it, or no uid at all (gids, an exe).
      problems.push_back(
          absl::StrCat(what, ": backend '", backend.name(), "' cannot keep hallocd's own uid ",
                       self, " to ", CpuAccessName(r.max_cpu),
                       " (it may widen its fds): that uid's Allocates and imports under it fail "
                       "FAILED_PRECONDITION"));
    }
    if (!r.AnyDevice() && !backend.CanLimitAttach()) {
      problems.push_back(absl::StrCat(what, ": backend '", backend.name(),
                                      "' cannot limit which devices attach a buffer (",
                                      r.attach_devices.empty() ? "no attach_devices: no device may"
                                                               : "attach_devices without \"*\"",
                                      "): its Allocates and imports fail FAILED_PRECONDITION"));
    }
  }
  return problems;
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::Load(const std::string& path, Writer writer) {
  const std::string shown = Quote(path);
  // Found first without opening it (O_PATH): opening a device can act (a
  // watchdog's arms it), and a draft's path is anyone's to point anywhere.
  UniqueFd found;
  if (writer == Writer::kTrusted) {
    absl::StatusOr<UniqueFd> opened = OpenTrusted(path, O_PATH);
    if (!opened.ok()) {
      return Prefixed(opened.status(), absl::StrCat("policy file ", shown));
    }
    found = *std::move(opened);
  } else {
    found.reset(::open(path.c_str(), O_PATH | O_CLOEXEC));
    if (!found) {
      return errno == ENOENT ? absl::NotFoundError(absl::StrCat("no policy file ", shown))
                             : ErrnoStatus(errno, absl::StrCat("open(", shown, ")"));
    }
  }
  struct stat st;
  if (::fstat(found.get(), &st) != 0) return ErrnoStatus(errno, "fstat");
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("policy file ", shown, " is not a regular file"));
  }
  // That very file, now for reading.
  UniqueFd fd(::open(absl::StrCat("/proc/self/fd/", found.get()).c_str(),
                     O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open(", shown, ")"));
  if (writer == Writer::kTrusted) {
    if (!TrustedOwner(st.st_uid)) {
      return absl::PermissionDeniedError(
          absl::StrCat("policy file ", shown, " belongs to uid ", st.st_uid,
                       ": hallocd takes its policy only from root or its own user"));
    }
    if (OthersMayWrite(fd.get(), st)) {
      const std::string who = (st.st_mode & S_IWOTH) != 0 ? "every user"
                              : st.st_gid != 0            ? absl::StrCat("group ", st.st_gid)
                                               : "users or groups its ACL names (getfacl)";
      return absl::PermissionDeniedError(
          absl::StrCat("policy file ", shown, " is writable by ", who, " (mode ",
                       absl::StrFormat("%04o", st.st_mode & 07777), "): chmod go-w it"));
    }
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy file ", shown, " is ", st.st_size, " bytes; at most ", kMaxFileBytes));
  }
  std::string text;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd.get(), buf, sizeof(buf))) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("read(", shown, ")"));
    }
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxFileBytes) {  // it grew while read
      return absl::InvalidArgumentError(
          absl::StrCat("policy file ", shown, " is over ", kMaxFileBytes, " bytes"));
    }
  }
  return Parse(text, path);
}

uint64_t Policy::DefaultBufferQuota() {
  const uint64_t limit = FdLimit();
  if (limit == 0) return 0;
  return std::max<uint64_t>(limit / 4, 1024);
}

std::shared_ptr<const Policy> Policy::Default() {
  static const std::shared_ptr<const Policy> policy = [] {
    auto p = std::make_shared<Policy>();
    p->source_ = "built-in default";
    Rule rule;
    rule.name = "default";
    rule.any = true;
    rule.usage_mask = ~usage::kReservedMask;
    rule.heaps = {"*"};
    rule.max_cpu = CpuAccess::kReadWrite;
    // Without a policy file, no one client (uid) may take more than half of
    // the machine's memory, nor a quarter in one buffer.
    const uint64_t memory = static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                            static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    rule.quota_bytes = memory / 2;
    rule.max_buffer_bytes = memory / 4;
    // Nor, in live buffers, a quarter of hallocd's fds (each is an fd in
    // hallocd): less than the buffers' share of them (BufferRoom) at the
    // usual limits (10k fds and more), so that one uid alone cannot keep
    // every other from allocating.
    rule.quota_buffers = DefaultBufferQuota();
    rule.attach_devices = {"*"};
    rule.share_to = {"@same_uid"};
    rule.receive_from = {"@same_uid"};
    p->rules_.push_back(std::move(rule));
    return std::shared_ptr<const Policy>(std::move(p));
  }();
  return policy;
}

const Rule* Policy::Match(const Identity& id) const {
  for (const Rule& rule : rules_) {
    if (rule.Matches(id)) return &rule;
  }
  return nullptr;
}

const Rule* Policy::Find(absl::string_view name) const {
  for (const Rule& rule : rules_) {
    if (rule.name == name) return &rule;
  }
  return nullptr;
}

}  // namespace halloc
