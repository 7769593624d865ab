// The policy file (service/policy/policy.h): Policy::Parse, the same call
// Policy::Load, SIGHUP reloads and `hallocctl policy check` make, on fuzzed
// text-format halloc.v1.Policy.
//
// Invariants: a refusal is INVALID_ARGUMENT whose every error starts with
// the source name (FILE:LINE:COL or FILE: clients[i]); parsing is
// deterministic; an accepted policy has valid, unique rule names that Find
// returns, match criteria on every rule, an absolute exe, no reserved usage
// bit, known heaps, and share lists that name existing clients; Match
// returns the first rule that matches; and the same policy printed back in
// canonical text form is accepted with the same rules.
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/usage.h"
#include "halloc/v1/policy.pb.h"
#include "service/backend/backend.h"
#include "service/backend/registry.h"
#include "service/policy/policy.h"
#include "tests/fuzz/check.h"

namespace halloc {
namespace {

constexpr char kSource[] = "fuzz.textproto";

bool ValidRuleName(const std::string& n) {
  return !n.empty() && n.size() <= 63 && std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

std::string Summary(const Rule& r) {
  return absl::StrCat(r.name, " any=", r.any, " uids=", r.uids.size(), " gids=",
                      r.gids.size(), " exe=", r.exe, " usage=0x", absl::Hex(r.usage_mask),
                      " heaps=", r.heaps.size(), " max=", r.max_buffer_bytes, " q=",
                      r.quota_bytes, "/", r.quota_buffers,
                      " cpu=", static_cast<int>(r.max_cpu), " attach=",
                      r.attach_devices.size(), " share=", r.share_to.size(), " recv=",
                      r.receive_from.size());
}

bool SameRules(const Policy& a, const Policy& b) {
  if (a.rules().size() != b.rules().size()) return false;
  for (size_t i = 0; i < a.rules().size(); ++i) {
    const Rule& x = a.rules()[i];
    const Rule& y = b.rules()[i];
    if (Summary(x) != Summary(y) || x.uids != y.uids || x.gids != y.gids ||
        x.heaps != y.heaps || x.attach_devices != y.attach_devices ||
        x.share_to != y.share_to || x.receive_from != y.receive_from) {
      return false;
    }
  }
  return true;
}

void CheckAccepted(const Policy& p) {
  FUZZ_CHECK(p.source() == kSource);
  const std::vector<std::string> known = KnownHeaps();
  std::vector<std::string> names;
  for (const Rule& r : p.rules()) {
    const std::string what = Summary(r);
    FUZZ_CHECK(ValidRuleName(r.name), what);
    FUZZ_CHECK(std::find(names.begin(), names.end(), r.name) == names.end(),
               "duplicate name accepted: " + what);
    names.push_back(r.name);
    FUZZ_CHECK(p.Find(r.name) == &r, what);
    FUZZ_CHECK(r.any || !r.uids.empty() || !r.gids.empty() || !r.exe.empty(),
               "rule without match criteria: " + what);
    FUZZ_CHECK(r.exe.empty() || r.exe[0] == '/', what);
    FUZZ_CHECK((r.usage_mask & usage::kReservedMask) == 0,
               "reserved usage bits granted: " + what);
    for (const std::string& h : r.heaps) {
      FUZZ_CHECK(h == "*" || std::find(known.begin(), known.end(), h) != known.end(),
                 "unknown heap '" + h + "': " + what);
    }
    FUZZ_CHECK(r.max_cpu == CpuAccess::kNone || r.max_cpu == CpuAccess::kRead ||
               r.max_cpu == CpuAccess::kReadWrite, what);
  }
  for (const Rule& r : p.rules()) {
    for (const auto* list : {&r.share_to, &r.receive_from}) {
      for (const std::string& n : *list) {
        FUZZ_CHECK(n == "*" || n == "@same_uid" || p.Find(n) != nullptr,
                   "unknown client '" + n + "' accepted");
      }
    }
  }
  // Match is first-match over the rules, for identities the rules name
  // (with no verified executable: rules naming one must not match them).
  auto make_id = [](uid_t uid, gid_t gid) {
    Identity id;
    id.uid = uid;
    id.gid = gid;
    id.pid = 1;
    return id;
  };
  std::vector<Identity> ids = {make_id(0, 0), make_id(65534, 65534)};
  for (const Rule& r : p.rules()) {
    ids.push_back(make_id(r.uids.empty() ? 1000u : r.uids.front(),
                          r.gids.empty() ? 1000u : r.gids.front()));
  }
  for (const Identity& id : ids) {
    const Rule* first = nullptr;
    for (const Rule& r : p.rules()) {
      if (r.Matches(id)) {
        first = &r;
        break;
      }
    }
    FUZZ_CHECK(p.Match(id) == first);
    if (first != nullptr && !first->any) {
      // Each criterion the rule names holds.
      FUZZ_CHECK(first->uids.empty() ||
                 std::count(first->uids.begin(), first->uids.end(), id.uid) > 0);
      FUZZ_CHECK(first->gids.empty() ||
                 std::count(first->gids.begin(), first->gids.end(), id.gid) > 0);
      FUZZ_CHECK(first->exe.empty(), "an exe rule matched an unverified process");
    }
    if (first != nullptr) {
      (void)ListAdmits(first->share_to, first->name, id.uid, id.uid);
      (void)first->AllowsHeap("memfd");
    }
  }
}

void RunOne(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(text, kSource);
  absl::StatusOr<std::shared_ptr<const Policy>> again = Policy::Parse(text, kSource);
  FUZZ_CHECK(p.ok() == again.ok(), "not deterministic");
  if (std::getenv("HALLOC_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "%s\n", p.ok() ? absl::StrCat((*p)->rules().size(), " rules").c_str()
                                         : p.status().ToString().c_str());
  }
  if (!p.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(p.status()), p.status().ToString());
    FUZZ_CHECK(p.status() == again.status(), "not deterministic");
    const std::string msg(p.status().message());
    FUZZ_CHECK(absl::StartsWith(msg, absl::StrCat(kSource, ":")),
               "error without its source: " + msg);
  } else {
    FUZZ_CHECK(*p != nullptr);
    CheckAccepted(**p);
    FUZZ_CHECK(SameRules(**p, **again), "not deterministic");
  }

  // The same policy in canonical text form means the same thing.
  v1::Policy proto;
  google::protobuf::TextFormat::Parser parser;
  parser.AllowPartialMessage(false);
  struct Quiet : google::protobuf::io::ErrorCollector {
    void AddError(int, int, const std::string&) override {}
    void AddWarning(int, int, const std::string&) override {}
  } quiet;
  parser.RecordErrorsTo(&quiet);
  if (!parser.ParseFromString(text, &proto)) {
    FUZZ_CHECK(!p.ok(), "accepted text that TextFormat refuses");
    return;
  }
  std::string canonical;
  FUZZ_CHECK(google::protobuf::TextFormat::PrintToString(proto, &canonical));
  absl::StatusOr<std::shared_ptr<const Policy>> c = Policy::Parse(canonical, kSource);
  FUZZ_CHECK(c.ok() == p.ok(),
             absl::StrCat("canonical form ", c.ok() ? "accepted" : "refused",
                          ", original ", p.ok() ? "accepted" : "refused", ": ",
                          c.ok() ? p.status().ToString() : c.status().ToString()));
  if (c.ok()) {
    FUZZ_CHECK(SameRules(**p, **c), "canonical form has other rules");
  }
}

}  // namespace
}  // namespace halloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  halloc::RunOne(data, size);
  return 0;
}
