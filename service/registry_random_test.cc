// Random sequences of what sessions may do to the registry (join, allocate,
// share, import with its delivery settled at once or later, succeeding or
// not, release (whole holds, or import references given back, named by
// their holds' generations or not), revoke with and without live revoke,
// end), checking after
// every step that the links a revoke and an end follow agree with what they
// link (Registry::CheckLinksForTesting), that the accounts agree (Stats'
// live buffers, List{all}, the charges and every session's holdings in
// Dump, and Dump read page by page against Dump whole), that an owner's
// Describe counts the imports delivered of its buffer (imports_total,
// against the test's own count), and that once every session ended nothing is left. Fixed seeds: a
// failure names its seed and step.
#include <sys/mman.h>

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/registry.h"

namespace halloc {
namespace {

constexpr uint64_t kMaxBuffersPerSession = 6;
constexpr int kRuns = 150, kSteps = 300;

enum class Mode { kLive, kNotLive, kMixed };

// An import on its way to its client, as the allocator has it.
struct OnItsWay {
  uint64_t session, grant, buffer, view, generation;
  CpuAccess access;
  std::optional<CpuAccess> widened_from;
  bool fails;   // its send fails
  bool live;    // its view is noted (a backend with live revoke)
};

class Run {
 public:
  Run(uint32_t seed, Mode mode)
      : rng_(seed), mode_(mode), reg_("memfd", false, kMaxBuffersPerSession) {}

  // The steps; "" once all went well, else what broke where.
  std::string Go() {
    for (int i = 0; i < 3; ++i) Join();
    for (int step = 0; step < kSteps; ++step) {
      const std::string op = Step();
      if (absl::Status s = reg_.CheckLinksForTesting(); !s.ok()) {
        return absl::StrCat("step ", step, " (", op, "): ", s.ToString());
      }
      if (const std::string wrong = Accounts(1 + step % 4); !wrong.empty()) {
        return absl::StrCat("step ", step, " (", op, "): ", wrong);
      }
    }
    while (!pending_.empty()) Finish(pending_.size() - 1);
    for (uint64_t s : live_) reg_.Leave(s);
    if (absl::Status s = reg_.CheckLinksForTesting(); !s.ok()) return "at the end: " + s.ToString();
    v1::StatsResponse stats;
    reg_.FillStats(&stats);
    if (stats.grants() != 0 || stats.live_buffers() != 0) {
      return absl::StrCat("every session ended, yet ", stats.grants(), " grants and ",
                          stats.live_buffers(), " buffers are left");
    }
    return "";
  }

 private:
  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  bool Chance(int pct) { return static_cast<int>(Pick(100)) < pct; }
  CpuAccess AnyAccess() { return static_cast<CpuAccess>(1 + Pick(3)); }
  uint64_t AnySession() { return live_[Pick(live_.size())]; }
  bool Live() { return mode_ == Mode::kLive || (mode_ == Mode::kMixed && Chance(50)); }
  std::vector<uint64_t> Held(uint64_t s) {
    std::vector<uint64_t> ids;
    const v1::ListResponse held = reg_.List(s, false);
    for (const auto& b : held.buffers()) ids.push_back(b.id());
    return ids;
  }

  // "" when the accounts agree: Stats' live buffers are List{all}'s and
  // what is charged (every buffer here is charged to one client until it
  // goes); each live session's holdings in Dump are what List gives it; and
  // Dump in pages of `page_size` rows is Dump whole.
  std::string Accounts(size_t page_size) {
    v1::StatsResponse stats;
    reg_.FillStats(&stats);
    const int listed = reg_.List(0, true).buffers_size();
    v1::DumpResponse whole;
    if (absl::Status s = reg_.FillDump(&whole); !s.ok()) return "Dump: " + s.ToString();
    uint64_t charged = 0;
    for (const auto& q : whole.clients()) charged += q.buffers();
    if (stats.live_buffers() != uint64_t(listed) || charged != uint64_t(listed)) {
      return absl::StrCat("Stats says ", stats.live_buffers(), " live buffers, List{all} ", listed,
                          ", Dump's charges ", charged);
    }
    if (whole.sessions_size() != static_cast<int>(live_.size())) {
      return absl::StrCat("Dump has ", whole.sessions_size(), " sessions; ", live_.size(),
                          " are live");
    }
    for (const auto& u : whole.sessions()) {
      const uint64_t held = Held(u.session_id()).size();
      if (u.owned_buffers() + u.imported_buffers() != held) {
        return absl::StrCat("Dump says session ", u.session_id(), " holds ",
                            u.owned_buffers() + u.imported_buffers(), " buffers; List ", held);
      }
    }
    // Each buffer its owner still holds: the imports made of it, as counted
    // here, in the owner's Describe.
    const v1::ListResponse all = reg_.List(0, true);
    for (const v1::BufferInfo& b : all.buffers()) {
      for (const v1::Holder& h : b.holders()) {
        if (!h.owner()) continue;
        absl::StatusOr<v1::BufferInfo> d = reg_.Describe(h.session_id(), b.id());
        if (!d.ok()) return absl::StrCat("its owner cannot describe buffer ", b.id());
        if (d->imports_total() != imports_[b.id()]) {
          return absl::StrCat("buffer ", b.id(), " was imported ", imports_[b.id()],
                              " times; its owner is told ", d->imports_total());
        }
      }
    }
    v1::DumpResponse paged;
    std::string token;
    for (int pages = 0;; ++pages) {
      v1::DumpResponse page;
      if (absl::Status s = reg_.FillDump(&page, token, page_size); !s.ok()) {
        return absl::StrCat("Dump page ", pages, ": ", s.ToString());
      }
      paged.MergeFrom(page);
      token = page.next_page_token();
      if (token.empty()) break;
      if (pages > 1000) return "Dump's pages never end";
    }
    paged.clear_next_page_token();
    if (paged.SerializeAsString() != whole.SerializeAsString()) {
      return absl::StrCat("Dump in pages of ", page_size, " is not Dump whole:\n",
                          paged.DebugString(), "vs\n", whole.DebugString());
    }
    return "";
  }

  void Join() {
    Identity id;
    id.uid = 1 + Pick(3);
    id.pid = 100 + id.uid;
    reg_.Join(next_session_, id);
    live_.push_back(next_session_++);
  }

  std::string Step() {
    const int op = Pick(100);
    if (live_.empty() || (op < 6 && live_.size() < 8)) {
      Join();
      return "join";
    }
    const uint64_t s = AnySession();
    if (op < 11) {
      live_.erase(std::find(live_.begin(), live_.end(), s));
      reg_.Leave(s);
      return absl::StrCat("leave ", s);
    }
    if (op < 17) {
      auto b = std::make_shared<BufferRecord>();
      b->size = 4096;
      b->charged_to = absl::StrCat("app/", s % 3);  // a few clients
      b->fd = UniqueFd(::memfd_create("registry_random_test", MFD_CLOEXEC));
      v1::AllocateResponse reply;
      const CpuAccess a = Chance(80) ? CpuAccess::kReadWrite : CpuAccess::kRead;
      if (reg_.Add(s, {b}, a, [](uint64_t, uint64_t) { return absl::OkStatus(); }, &reply).ok()) {
        buffers_.push_back(reply.buffers(0).id());
      }
      return absl::StrCat("add ", s);
    }
    if (op < 40) {
      const std::vector<uint64_t> held = Held(s);
      if (held.empty() && buffers_.empty()) return "share: nothing";
      const uint64_t b =
          !held.empty() && Chance(90) ? held[Pick(held.size())] : buffers_[Pick(buffers_.size())];
      GrantView view;
      view.peer_uid = 1 + Pick(3);
      view.access = AnyAccess();
      absl::StatusOr<v1::Grant> g = reg_.Share(s, b, [&](CpuAccess) { return view; });
      if (g.ok()) grants_.push_back({g->id(), s, g->token()});
      return absl::StrCat("share ", s, " b", b);
    }
    if (op < 68) {
      if (grants_.empty()) return "import: nothing";
      const Grant& g = grants_[Chance(60) ? grants_.size() - 1 - Pick(std::min<size_t>(
                                                                     grants_.size(), 6))
                                          : Pick(grants_.size())];
      const CpuAccess cap = AnyAccess();
      CpuAccess decided = CpuAccess::kNone;
      absl::StatusOr<Registry::Imported> i =
          reg_.Import(s, g.token, [&](const GrantView& v) -> absl::StatusOr<CpuAccess> {
            decided = Narrower(v.access, cap);
            return decided;
          });
      if (!i.ok()) return absl::StrCat("import ", s, " g", g.id, ": refused");
      pending_.push_back({s, i->grant_id, i->buffer->id, next_view_++, i->generation, decided,
                          i->widened_from, Chance(15), Live()});
      generations_[{s, i->buffer->id}].push_back(i->generation);
      if (Chance(55)) Finish(pending_.size() - 1);
      return absl::StrCat("import ", s, " g", g.id);
    }
    if (op < 75) {
      if (pending_.empty()) return "finish: nothing";
      Finish(Pick(pending_.size()));
      return "finish";
    }
    if (op < 86) {
      std::vector<uint64_t> ids;
      const std::vector<uint64_t> held = Held(s);
      for (size_t k = 1 + Pick(3); k > 0; --k) {
        if (!held.empty() && Chance(60)) {
          ids.push_back(held[Pick(held.size())]);
        } else if (!buffers_.empty()) {
          ids.push_back(buffers_[Pick(buffers_.size())]);  // perhaps revoked from it
        }
      }
      // A third of them give back import references (a client's import
      // replies it did not keep), the rest drop holds.
      const bool references = Chance(33);
      // Half of those name the hold each is on: one its imports were on,
      // perhaps gone since (0 where none imported it).
      std::vector<uint64_t> generations;
      if (references && Chance(50)) {
        for (uint64_t id : ids) {
          const std::vector<uint64_t>& known = generations_[{s, id}];
          generations.push_back(known.empty() ? 0 : known[Pick(known.size())]);
        }
      }
      (void)reg_.Release(s, ids, references, generations);
      return absl::StrCat(references ? "give back references " : "release ", s, " (", ids.size(),
                          generations.empty() ? ")" : ", by generation)");
    }
    if (op < 88) {
      if (!buffers_.empty()) (void)reg_.Describe(s, buffers_[Pick(buffers_.size())]);
      return "describe";
    }
    std::vector<uint64_t> mine;
    for (const Grant& g : grants_) {
      if (g.from == s) mine.push_back(g.id);
    }
    if (mine.empty()) return "revoke: nothing";
    const uint64_t g = mine[Pick(mine.size())];
    const bool live = Live();
    (void)reg_.Revoke(s, g, live);
    return absl::StrCat("revoke ", s, " g", g, live ? " live" : "");
  }

  // How the allocator ends an import (allocator.cc): the view noted, the
  // send, its outcome settled.
  void Finish(size_t i) {
    const OnItsWay p = pending_[i];
    pending_.erase(pending_.begin() + i);
    bool sent = !p.fails;
    if (p.live) {
      if (!reg_.AddImportView(p.session, p.grant, p.buffer, p.access, p.view).ok()) {
        sent = false;
      } else if (!sent) {
        reg_.DropImportView(p.session, p.grant, p.buffer, p.view);
      }
    }
    reg_.SettleImport(p.session, p.buffer, p.generation, sent);
    if (sent) ++imports_[p.buffer];
    if (!sent && p.widened_from) {
      reg_.UndoWidening(p.session, p.buffer, p.access, *p.widened_from);
    }
  }

  struct Grant {
    uint64_t id, from;
    std::string token;
  };

  std::mt19937 rng_;
  const Mode mode_;
  Registry reg_;
  std::vector<uint64_t> live_;
  uint64_t next_session_ = 100, next_view_ = 5000;
  std::vector<uint64_t> buffers_;
  std::vector<Grant> grants_;
  std::vector<OnItsWay> pending_;
  // Per buffer, the imports delivered of it.
  std::map<uint64_t, uint64_t> imports_;
  // Per (session, buffer), the generations its imports were told.
  std::map<std::pair<uint64_t, uint64_t>, std::vector<uint64_t>> generations_;
};

void RunAll(Mode mode) {
  for (uint32_t seed = 1; seed <= kRuns; ++seed) {
    const std::string broke = Run(seed, mode).Go();
    ASSERT_EQ(broke, "") << "seed " << seed;
  }
}

TEST(RegistryRandomTest, Live) { RunAll(Mode::kLive); }
TEST(RegistryRandomTest, NotLive) { RunAll(Mode::kNotLive); }
TEST(RegistryRandomTest, Mixed) { RunAll(Mode::kMixed); }

}  // namespace
}  // namespace halloc
