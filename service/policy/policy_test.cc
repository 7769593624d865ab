#include "service/policy/policy.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/backend/registry.h"

namespace halloc {
namespace {

std::string Example() {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/service/policy/example.textproto");
}

TEST(PolicyTest, ExampleLoadsAndMatchesByUidInOrder) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Load(Example());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ((*p)->rules().size(), 4u);
  EXPECT_EQ((*p)->Match({1001, 1001, 1, "", std::nullopt})->name, "camera");
  EXPECT_EQ((*p)->Match({1002, 5, 1, "", std::nullopt})->name, "compositor");
  EXPECT_EQ((*p)->Match({1004, 5, 1, "", std::nullopt})->name, "app");
  EXPECT_EQ((*p)->Match({0, 0, 1, "", std::nullopt})->name, "admin");
  EXPECT_EQ((*p)->Match({4242, 4242, 1, "", std::nullopt}), nullptr);  // default deny
  const Rule* camera = (*p)->Find("camera");
  EXPECT_EQ(camera->max_cpu, CpuAccess::kReadWrite);
  EXPECT_EQ(camera->quota_buffers, 32u);
  EXPECT_TRUE(camera->usage_mask & usage::kCameraOutput);
  EXPECT_FALSE(camera->usage_mask & usage::kGpuTexture);
  EXPECT_EQ((*p)->Find("compositor")->max_cpu, CpuAccess::kRead);
  EXPECT_TRUE((*p)->Find("app")->AllowsHeap("memfd"));
  EXPECT_FALSE((*p)->Find("app")->AllowsHeap("halloc"));
  EXPECT_TRUE((*p)->Find("camera")->AllowsHeap("halloc"));
}

// What the package installs as /etc/halloc/policy.textproto: root alone
// (rules by uid are the machine's own; the example's uid 1001 is another
// account on every machine).
TEST(PolicyTest, ThePackagesDefaultPolicyLetsRootAloneIn) {
  absl::StatusOr<std::shared_ptr<const Policy>> p =
      Policy::Load(absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/service/policy/default.textproto"));
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_NE((*p)->Match({0, 0, 1, "", std::nullopt}), nullptr);
  EXPECT_EQ((*p)->Match({0, 0, 1, "", std::nullopt})->name, "admin");
  for (uid_t uid : {1u, 1000u, 1001u, 1002u, 1003u, 1004u, 65534u}) {
    EXPECT_EQ((*p)->Match({uid, uid, 1, "", std::nullopt}), nullptr) << "uid " << uid;
    EXPECT_EQ((*p)->Match({uid, 0, 1, "", std::nullopt}), nullptr) << "uid " << uid << ", gid 0";
  }
}

// Two real files to stand for executables (exe rules compare files, not
// paths).
class ExeFiles {
 public:
  ExeFiles() {
    for (const char* name : {"cam", "other"}) std::ofstream(dir_ / name) << name;
  }
  std::string Path(const char* name) const { return dir_ / name; }
  Identity Runs(uid_t uid, gid_t gid, const char* name) const {
    return {uid, gid, 1, Path(name), FileIdOf(Path(name))};
  }

 private:
  testing::TempDir dir_{"policy-test"};
};

TEST(PolicyTest, MatchCriteriaAllHold) {
  ExeFiles files;
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(absl::StrCat(R"(
    clients { name: "exact" match { uids: 7 gids: 8 exe: ")", files.Path("cam"), R"(" } }
    clients { name: "gid" match { gids: 9 } }
    clients { name: "rest" match { any: true } }
  )"), "inline");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->Match(files.Runs(7, 8, "cam"))->name, "exact");
  EXPECT_EQ((*p)->Match(files.Runs(7, 8, "other"))->name, "rest");
  EXPECT_EQ((*p)->Match(files.Runs(7, 9, "cam"))->name, "gid");
  EXPECT_EQ((*p)->Match({1, 1, 1, "", std::nullopt})->name, "rest");
  EXPECT_TRUE((*p)->matches_exe());
  const Rule* exact = (*p)->Find("exact");
  EXPECT_EQ(exact->max_cpu, CpuAccess::kNone);  // unset = NONE
  EXPECT_EQ(exact->usage_mask, 0u);             // nothing granted
  EXPECT_FALSE(exact->AllowsHeap("memfd"));
}

// `any` is a catch-all alone: beside other criteria it is refused, for it
// would either do nothing or make them do nothing (a rule meant for root
// matching every uid).
TEST(PolicyTest, AnyBesideOtherCriteriaIsAnError) {
  for (const char* match : {"any: true uids: 0", "gids: 0 any: true", "any: true exe: \"/bin/sh\""}) {
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
        absl::StrCat("clients {\n  name: \"root-only\"\n  match { ", match,
                     " }\n  usages: \"*\"\n}\n"),
        "p.textproto");
    ASSERT_FALSE(p.ok()) << match;
    EXPECT_TRUE(absl::StrContains(p.status().message(), "p.textproto:3:")) << p.status();
    EXPECT_TRUE(absl::StrContains(p.status().message(), "'any: true' matches every session"))
        << p.status();
  }
  // Should such a rule be built anyway, every criterion holds.
  Rule rule;
  rule.any = true;
  rule.uids = {0};
  EXPECT_FALSE(rule.Matches({4242, 4242, 1, "", std::nullopt}));
  EXPECT_TRUE(rule.Matches({0, 0, 1, "", std::nullopt}));
  rule.uids.clear();
  EXPECT_TRUE(rule.Matches({4242, 4242, 1, "", std::nullopt}));
}

// JudgesAlike holds only where no rule could tell the two apart (a rule
// per criterion matches one of each differing pair and not the other) and
// both are charged to one uid; the executable counts only where a rule
// names one.
TEST(PolicyTest, JudgesAlikeComparesWhatRulesReadAndWhoPays) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(R"(
    clients { name: "uid" match { uids: 7 } }
    clients { name: "gid" match { gids: 9 } }
    clients { name: "exe" match { exe: "/proc/self/exe" } }
  )",
                                                                  "inline");
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::shared_ptr<const Policy>> no_exe =
      Policy::Parse(R"(clients { name: "uid" match { uids: 7 } })", "inline");
  ASSERT_TRUE(no_exe.ok()) << no_exe.status();
  const std::optional<FileId> self = FileIdOf("/proc/self/exe");
  ASSERT_TRUE(self.has_value());
  const Identity base{1, 1, 10, "/a", std::nullopt};
  // Another pid and another path of the same (unverified) file.
  Identity same = base;
  same.pid = 11;
  same.exe = "/b";
  EXPECT_TRUE((*p)->JudgesAlike(base, same));
  EXPECT_EQ((*p)->Match(base), (*p)->Match(same));
  Identity uid = base, gid = base, exe = base, paid = base;
  uid.uid = 7;
  gid.gid = 9;
  exe.exe_file = self;
  paid.account_uid = 2;
  for (const Identity* other : {&uid, &gid, &exe}) {
    EXPECT_FALSE((*p)->JudgesAlike(base, *other));
    EXPECT_NE((*p)->Match(base), (*p)->Match(*other));
  }
  EXPECT_FALSE((*p)->JudgesAlike(base, paid)) << "charged to another uid";
  // A verified session and its own unverified request (RequestIdentity
  // vouches for no executable where no rule names one): alike there.
  EXPECT_TRUE((*no_exe)->JudgesAlike(base, exe));
  EXPECT_FALSE((*no_exe)->JudgesAlike(base, uid));
}

// Only a policy with an `exe` rule needs requests' executables vouched for.
TEST(PolicyTest, SaysWhetherAnyRuleMatchesExecutables) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(R"(
    clients { name: "gid" match { gids: 9 } }
    clients { name: "rest" match { any: true } }
  )", "inline");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE((*p)->matches_exe());
  EXPECT_FALSE(Policy::Default()->matches_exe());
}

// What a bind mount over the rule's path in another mount namespace looks
// like from hallocd: /proc/<pid>/exe names the rule's path, but the file is
// another one. Only the file counts.
TEST(PolicyTest, ExeRulesMatchTheFileNotThePath) {
  ExeFiles files;
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(absl::StrCat(
      "clients { name: \"cam\" match { exe: \"", files.Path("cam"), "\" } }"), "inline");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NE((*p)->Match(files.Runs(7, 7, "cam")), nullptr);
  Identity spoof = files.Runs(7, 7, "other");
  spoof.exe = files.Path("cam");  // the path string lies
  EXPECT_EQ((*p)->Match(spoof), nullptr);
  Identity unverified = files.Runs(7, 7, "cam");
  unverified.exe_file.reset();  // the handshake did not verify it
  EXPECT_EQ((*p)->Match(unverified), nullptr);
  // A binary replaced in place (an upgrade) is the rule's new file.
  const Identity before = files.Runs(7, 7, "cam");
  std::filesystem::rename(files.Path("other"), files.Path("cam"));
  EXPECT_EQ((*p)->Match(before), nullptr);
  EXPECT_NE((*p)->Match(files.Runs(7, 7, "cam")), nullptr);
}

// What stat(2) says, through symlinks and /proc's magic links (as the
// broker reads /proc/P/exe), and nothing for what is not there.
TEST(PolicyTest, FileIdOfIsTheDeviceAndInodeStatSees) {
  for (const std::string path : {"/proc/self/exe", "/proc/self/ns/pid", "/dev/null", "/"}) {
    SCOPED_TRACE(path);
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    const std::optional<FileId> id = FileIdOf(path);
    ASSERT_TRUE(id.has_value());
    EXPECT_EQ(id->dev, st.st_dev);
    EXPECT_EQ(id->ino, st.st_ino);
  }
  EXPECT_EQ(FileIdOf("/nonexistent/halloc"), std::nullopt);
  EXPECT_NE(FileIdOf("/proc/self/exe"), FileIdOf("/dev/null"));
}

TEST(PolicyTest, SyntaxErrorsHaveLineAndColumn) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients {\n  name: \"a\"\n  match { uids: 1 }\n  bogus_field: 3\n}\n", "f.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(p.status().message(), "f.textproto:4:")) << p.status();
  EXPECT_TRUE(absl::StrContains(p.status().message(), "bogus_field")) << p.status();
}

TEST(PolicyTest, SemanticErrorsAreAllReportedWithLines) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients {\n"
      "  name: \"Bad Name\"\n"        // 2
      "  match { uids: 1 }\n"
      "  usages: \"camera_output\"\n"
      "  usages: \"warp_drive\"\n"    // 5
      "  heaps: \"floppy\"\n"         // 6
      "  share_to: \"nobody\"\n"
      "}\n"
      "clients {\n"
      "  name: \"nomatch\"\n"
      "  match { }\n"                 // 11
      "}\n"
      "clients { name: \"nomatch\" match { any: true } }\n",
      "p.textproto");
  ASSERT_FALSE(p.ok());
  const std::string msg(p.status().message());
  EXPECT_TRUE(absl::StrContains(msg, "p.textproto:2:")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "p.textproto:5:")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "warp_drive")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "p.textproto:6:")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "unknown client 'nobody'")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "p.textproto:11:")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "duplicate client name 'nomatch'")) << msg;
}

// The first rule that matches decides: one after a catch-all is dead, and
// would read as the rule of the sessions it names.
TEST(PolicyTest, ARuleAfterACatchAllIsRefused) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"all\" match { any: true } }\n"
      "clients { name: \"cam\"\n"
      "  match { uids: 1001 } usages: \"camera_output\" }\n",  // 3
      "c.textproto");
  ASSERT_FALSE(p.ok());
  const std::string msg(p.status().message());
  EXPECT_TRUE(absl::StrContains(msg, "c.textproto:3:")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "client 'cam' can never match: client 'all'")) << msg;
  // Last, a catch-all is what it is for.
  EXPECT_TRUE(Policy::Parse("clients { name: \"cam\" match { uids: 1001 } }\n"
                            "clients { name: \"all\" match { any: true } }\n",
                            "c.textproto")
                  .ok());
}

// So is one whose every session an earlier narrower-looking rule matches
// too: a uid's rule, then one for a program of that uid's.
TEST(PolicyTest, ARuleAnEarlierRuleCoversIsRefused) {
  struct Case {
    std::string first, second;
    bool refused;
  };
  const std::vector<Case> cases = {
      {"uids: 1001", "uids: 1001 exe: \"/usr/bin/cam\"", true},
      {"uids: 1001 uids: 1002", "uids: 1002 gids: 44", true},
      {"gids: 44", "uids: 1001 gids: 44", true},
      {"exe: \"/usr/bin/cam\"", "uids: 1001 exe: \"/usr/bin/cam\"", true},
      {"uids: 1001 gids: 44", "uids: 1001 gids: 44", true},
      // Narrower first: each rule has sessions of its own.
      {"uids: 1001 exe: \"/usr/bin/cam\"", "uids: 1001", false},
      {"uids: 1001", "uids: 1001 uids: 1003", false},
      {"uids: 1001", "gids: 44", false},
      {"uids: 1001 gids: 44", "uids: 1001", false},
      {"exe: \"/usr/bin/cam\"", "exe: \"/usr/bin/viewer\"", false},
      {"uids: 1001", "any: true", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("{", c.first, "} then {", c.second, "}"));
    absl::StatusOr<std::shared_ptr<const Policy>> p =
        Policy::Parse(absl::StrCat("clients { name: \"user\" match { ", c.first, " } }\n",
                                   "clients { name: \"cam\"\n  match { ", c.second, " } }\n"),
                      "c.textproto");
    EXPECT_EQ(p.ok(), !c.refused) << p.status();
    if (!c.refused || p.ok()) continue;
    const std::string msg(p.status().message());
    EXPECT_TRUE(absl::StrContains(msg, "c.textproto:3:")) << msg;
    EXPECT_TRUE(absl::StrContains(msg,
                                  "client 'cam' can never match: client 'user' before it "
                                  "matches every session it matches ("))
        << msg;
    EXPECT_TRUE(absl::StrContains(msg, "put the narrower rule first")) << msg;
  }
}

// Or several earlier rules together: each uid and gid the later rule names
// has an earlier rule of its own (helper-137).
TEST(PolicyTest, ARuleEarlierRulesCoverTogetherIsRefused) {
  struct Case {
    std::string rules;  // the earlier rules' matches, split by |
    std::string last;
    bool refused;
  };
  const std::vector<Case> cases = {
      {"uids: 1001|uids: 1002", "uids: 1001 uids: 1002", true},
      {"uids: 1001|uids: 1002", "uids: 1002 uids: 1001 gids: 44", true},
      {"uids: 1001|uids: 1002 gids: 44", "uids: 1001 uids: 1002 gids: 44", true},
      {"uids: 1001 exe: \"/usr/bin/cam\"|uids: 1002", "uids: 1001 uids: 1002 exe: \"/usr/bin/cam\"",
       true},
      // A pair no earlier rule has: the last rule has sessions of its own.
      {"uids: 1001|uids: 1002", "uids: 1001 uids: 1003", false},
      {"uids: 1001|gids: 44", "uids: 1001 uids: 1002", false},
      {"uids: 1001 exe: \"/usr/bin/cam\"|uids: 1002", "uids: 1001 uids: 1002", false},
      {"uids: 1001 gids: 44|uids: 1002", "uids: 1001 uids: 1002 gids: 44 gids: 45", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("{", c.rules, "} then {", c.last, "}"));
    std::string text;
    int n = 0;
    for (absl::string_view m : absl::StrSplit(c.rules, '|')) {
      absl::StrAppend(&text, "clients { name: \"r", ++n, "\" match { ", m, " } }\n");
    }
    absl::StrAppend(&text, "clients { name: \"last\" match { ", c.last, " } }\n");
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(text, "c.textproto");
    EXPECT_EQ(p.ok(), !c.refused) << text << p.status();
    if (!c.refused || p.ok()) continue;
    EXPECT_TRUE(absl::StrContains(p.status().message(),
                                  "client 'last' can never match: clients 'r1', 'r2' before it "
                                  "together match every session it matches"))
        << p.status();
  }
}

TEST(PolicyTest, APerUidSessionLimitAboveTheTotalIsRefused) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"all\" match { any: true } }\n"
      "sessions { max_per_uid: 300 max_total: 100 }\n",
      "s.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "max_per_uid (300) is above")) << p.status();
  // Equal, either left to its default, or smaller: accepted.
  for (const char* limits :
       {"sessions { max_per_uid: 100 max_total: 100 }\n", "sessions { max_per_uid: 300 }\n",
        "sessions { max_total: 100 }\n", "sessions { max_per_uid: 10 max_total: 300 }\n"}) {
    EXPECT_TRUE(
        Policy::Parse(absl::StrCat("clients { name: \"all\" match { any: true } }\n", limits),
                      "s.textproto")
            .ok())
        << limits;
  }
}

// Where unprivileged users may create user namespaces, any process can
// make /proc/P/exe name a file it can open: rules that match by exe alone
// are named so that hallocd can say so.
TEST(PolicyTest, NamesTheRulesThatMatchByExecutableAlone) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"cam\" match { exe: \"/usr/bin/cam\" } }\n"
      "clients { name: \"comp\" match { exe: \"/usr/bin/comp\" uids: 1001 } }\n"
      "clients { name: \"vid\" match { exe: \"/usr/bin/vid\" gids: 44 } }\n"
      "clients { name: \"apps\" match { uids: 1000 } }\n",
      "e.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->ExeRulesOpenToAnyUid(), std::vector<std::string>{"cam"});
  EXPECT_TRUE(Policy::Default()->ExeRulesOpenToAnyUid().empty());
}

// An exe rule whose path is missing, not a regular file, or a script
// validates (paths are looked up at each decision) but matches nothing as
// it stands: each is named so that hallocd and `policy check` can say so.
TEST(PolicyTest, NamesExeRulesThatMatchNothingAsTheirPathsStand) {
  halloc::testing::TempDir dir("policy-exe");
  const std::string script = dir / "script.sh";
  std::ofstream(script) << "#!/bin/sh\necho hi\n";
  const std::string true_bin = std::filesystem::canonical("/bin/true");
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      absl::StrCat("clients { name: \"dir\" match { exe: \"", dir.path(), "\" uids: 1 } }\n",
                   "clients { name: \"gone\" match { exe: \"", dir / "nothing", "\" uids: 1 } }\n",
                   "clients { name: \"sh\" match { exe: \"", script, "\" uids: 1 } }\n",
                   "clients { name: \"bin\" match { exe: \"", true_bin, "\" uids: 1 } }\n"),
      "x.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<std::string> problems = (*p)->ExeRuleProblems();
  ASSERT_EQ(problems.size(), 3u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0], "client 'dir'")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[0], "not a regular file")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1], "client 'gone'")) << problems[1];
  EXPECT_TRUE(absl::StrContains(problems[1], "until that file exists")) << problems[1];
  EXPECT_TRUE(absl::StrContains(problems[2], "client 'sh'")) << problems[2];
  EXPECT_TRUE(absl::StrContains(problems[2], "is a script")) << problems[2];
}

// An exe rule's path is looked up at each decision: one through a
// directory another user may change lets them pick the file that matches
// (or mount over it and stall the lookup). Named.
TEST(PolicyTest, NamesExeRulesReachedThroughWhatOthersMayChange) {
  halloc::testing::TempDir dir("policy-exe-open");
  const std::string open_dir = dir / "anyone";
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);  // writable by all, no sticky bit
  const std::string copy = open_dir + "/true";
  std::filesystem::copy_file("/bin/true", copy);
  const std::string trusted = std::filesystem::canonical("/bin/true");
  // A file others may write, in a directory only its owner may change.
  const std::string writable = dir / "writable-true";
  std::filesystem::copy_file("/bin/true", writable);
  ASSERT_EQ(::chmod(writable.c_str(), 0777), 0);
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      absl::StrCat("clients { name: \"open\" match { exe: \"", copy, "\" uids: 1 } }\n",
                   "clients { name: \"bin\" match { exe: \"", trusted, "\" uids: 1 } }\n",
                   "clients { name: \"w\" match { exe: \"", writable, "\" uids: 1 } }\n"),
      "x.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<std::string> problems = (*p)->ExeRuleProblems();
  ASSERT_EQ(problems.size(), 2u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0], "client 'open'")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[0], "another user may change")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1], "client 'w'")) << problems[1];
  EXPECT_TRUE(absl::StrContains(problems[1], "a file another user may change")) << problems[1];
}

// Two paths to one file (a merged /usr's /bin/cam and /usr/bin/cam; a
// symlinked directory here): a rule matches by file, so one after a rule
// for the other path that covers it otherwise matches nothing. Named;
// not refused (they may be two files again after an upgrade).
TEST(PolicyTest, NamesAnExeRuleAnEarlierOneCoversThroughAnotherPath) {
  halloc::testing::TempDir dir("policy-exe-same");
  ASSERT_EQ(::mkdir((dir / "real").c_str(), 0755), 0);
  const std::string real = dir / "real/true";
  std::filesystem::copy_file("/bin/true", real);
  ASSERT_EQ(::symlink((dir / "real").c_str(), (dir / "link").c_str()), 0);
  const std::string linked = dir / "link/true";
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      absl::StrCat("clients { name: \"first\" match { exe: \"", real, "\" uids: 1 } }\n",
                   "clients { name: \"same\" match { exe: \"", linked, "\" uids: 1 } }\n",
                   "clients { name: \"other\" match { exe: \"", linked, "\" uids: 2 } }\n"),
      "x.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<std::string> problems = (*p)->ExeRuleProblems();
  ASSERT_EQ(problems.size(), 1u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0], "client 'same'")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[0], "client 'first''s exe")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[0], "matches nothing while they are one file"))
      << problems[0];
}

TEST(PolicyTest, MissingFileIsNotFound) {
  EXPECT_EQ(Policy::Load("/nonexistent/policy").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(PolicyTest, DefaultAllowsSameUidSharingOnly) {
  std::shared_ptr<const Policy> p = Policy::Default();
  const Rule* r = p->Match({1234, 1234, 1, "", std::nullopt});
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(ListAdmits(r->share_to, "default", 1234, 1234));
  EXPECT_FALSE(ListAdmits(r->share_to, "default", 99, 1234));
  EXPECT_TRUE(ListAdmits({"*"}, "x", 1, 2));
  EXPECT_TRUE(ListAdmits({"cam"}, "cam", 1, 2));
  EXPECT_FALSE(ListAdmits({}, "cam", 1, 1));
}

TEST(PolicyTest, DefaultBoundsOneClientByTheMachinesMemory) {
  const uint64_t memory = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                          static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const Rule* r = Policy::Default()->Match({1234, 1234, 1, "", std::nullopt});
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->quota_bytes, memory / 2);
  EXPECT_EQ(r->max_buffer_bytes, memory / 4);
  EXPECT_GT(r->quota_bytes, 0u);
}

// Each live buffer is an fd in hallocd: one uid may not fill its table.
TEST(PolicyTest, DefaultBoundsOneClientsBuffersByHallocdsFdLimit) {
  rlimit lim{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur == RLIM_INFINITY) GTEST_SKIP() << "no fd limit here";
  const Rule* r = Policy::Default()->Match({1234, 1234, 1, "", std::nullopt});
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->quota_buffers, std::max<uint64_t>(lim.rlim_cur / 4, 1024));
  EXPECT_GT(r->quota_buffers, 0u);
  if (lim.rlim_cur >= 8192) EXPECT_LT(r->quota_buffers, lim.rlim_cur);
}

TEST(PolicyTest, AnEmptyPolicyIsAnError) {
  for (const char* text : {"", "# nothing but a comment\n", "sessions { max_per_uid: 4 }"}) {
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(text, "empty.textproto");
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(p.status().message(), "no client rules")) << p.status();
  }
}

TEST(PolicyTest, AnErrorIsOneLineWhateverTheFileHolds) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"x\\nevil.textproto:9:9: forged\" match { any: true } }",
      "f.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(std::string(p.status().message()).find('\n'), std::string::npos) << p.status();
  EXPECT_TRUE(absl::StrContains(p.status().message(), "x\\nevil")) << p.status();
  // The same name where a share list names an unknown client.
  p = Policy::Parse(
      "clients { name: \"x\\nevil.textproto:9:9: forged\" match { any: true } "
      "share_to: \"zz\" }",
      "f.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "unknown client 'zz'")) << p.status();
  // Two errors, a line each, and no line the name wrote.
  const std::vector<std::string> lines = absl::StrSplit(p.status().message(), '\n');
  EXPECT_EQ(lines.size(), 2u) << p.status();
  for (const std::string& line : lines) {
    EXPECT_TRUE(absl::StartsWith(line, "f.textproto")) << line;
  }
}

// A syntax error's message quotes the file's text: escaped, so that a
// file's escape sequences (a terminal title, a cleared screen) or a raw
// newline reach neither the log nor the terminal of whoever checks it.
TEST(PolicyTest, ASyntaxErrorQuotesTheFileEscaped) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"x\" max_cpu_access: \"\x1b]0;owned\x07\x1b[2J\r"
      "daemon.cc:139] policy reloaded\n",
      "f.textproto");
  ASSERT_FALSE(p.ok());
  const std::string msg(p.status().message());
  EXPECT_EQ(msg.find('\x1b'), std::string::npos) << absl::CHexEscape(msg);
  EXPECT_EQ(msg.find('\x07'), std::string::npos) << absl::CHexEscape(msg);
  EXPECT_EQ(msg.find('\r'), std::string::npos) << absl::CHexEscape(msg);
  for (absl::string_view line : absl::StrSplit(msg, '\n')) {
    EXPECT_TRUE(absl::StartsWith(line, "f.textproto:")) << absl::CHexEscape(msg);
  }
}

// Attach allow-lists name drivers as a kernel view holds them: an entry no
// view could hold would fail every allocation after its memory was made.
TEST(PolicyTest, AttachDevicesAreDriverNamesAViewCanHold) {
  for (const char* bad : {"attach_devices: \"\"", "attach_devices: \"a\\000b\"",
                          "attach_devices: \"bad name\"",
                          "attach_devices: \"0123456789abcdef0123456789abcdef\""}) {
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
        absl::StrCat("clients {\n  name: \"cam\"\n  match { uids: 1 }\n  ", bad, "\n}\n"),
        "p.textproto");
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_TRUE(absl::StrContains(p.status().message(), "p.textproto:4:")) << p.status();
    EXPECT_TRUE(absl::StrContains(p.status().message(), "driver name")) << p.status();
  }
  std::string nine;
  for (int i = 0; i < 9; ++i) absl::StrAppend(&nine, " attach_devices: \"d", i, "\"");
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      absl::StrCat("clients { name: \"cam\" match { uids: 1 }", nine, " }"), "p.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "names 9 drivers; at most 8")) << p.status();
  std::string eight = "attach_devices: \"*\"";
  for (int i = 0; i < 8; ++i) absl::StrAppend(&eight, " attach_devices: \"drv_", i, ".x-y\"");
  p = Policy::Parse(absl::StrCat("clients { name: \"cam\" match { uids: 1 } ", eight, " }"),
                    "p.textproto");
  EXPECT_TRUE(p.ok()) << p.status();
}

TEST(PolicyTest, HeapsAreHeapsNotBackends) {
  // memfd-pool is a backend serving heap "memfd": a rule naming it would
  // validate and then never match, so it is refused with the right name.
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"a\" match { any: true } heaps: \"memfd-pool\" }", "f.textproto");
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "heap 'memfd'")) << p.status();
  p = Policy::Parse("clients { name: \"a\" match { any: true } heaps: \"memfd\" }",
                    "f.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->rules()[0].AllowsHeap(HeapOfBackend("memfd-pool")));
  // The stock-kernel backends serve heaps of their own names.
  p = Policy::Parse(
      "clients { name: \"a\" match { any: true } heaps: \"dmaheap\" heaps: \"udmabuf\" }",
      "f.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->rules()[0].AllowsHeap(HeapOfBackend("dmaheap")));
  EXPECT_TRUE((*p)->rules()[0].AllowsHeap(HeapOfBackend("udmabuf")));
  EXPECT_FALSE((*p)->rules()[0].AllowsHeap(HeapOfBackend("memfd")));
}

// A backend that only answers what it can enforce.
class Abilities final : public Backend {
 public:
  Abilities(std::string name, std::vector<CpuAccess> enforces, bool limits_attach)
      : name_(std::move(name)), enforces_(std::move(enforces)), limits_attach_(limits_attach) {}
  absl::string_view name() const override { return name_; }
  bool MakesDmaBufs() const override { return false; }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest&) override {
    return absl::UnimplementedError("not here");
  }
  bool CanEnforce(CpuAccess access) const override {
    return std::find(enforces_.begin(), enforces_.end(), access) != enforces_.end();
  }
  bool CanLimitAttach() const override { return limits_attach_; }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd&, const ViewRights&) override {
    return absl::UnimplementedError("not here");
  }
  // As memfd does for a hallocd that is not root: narrower rights bind no
  // holder of hallocd's uid.
  bool CanEnforceFor(CpuAccess access, const Holder& holder) const override {
    return CanEnforce(access) && (access == CpuAccess::kReadWrite || holder.uid != unbound_);
  }
  std::optional<uid_t> unbound_;

 private:
  std::string name_;
  std::vector<CpuAccess> enforces_;
  bool limits_attach_;
};

// A rule that caps hallocd's own uid below read-write, where the backend
// cannot keep that uid to it (memfd under a hallocd run by a user), is
// named: every Allocate and import of that uid under it would fail.
TEST(PolicyTest, NamesARuleCappingHallocdsOwnUidTheBackendCannotHold) {
  const uid_t self = ::geteuid();
  absl::StatusOr<std::shared_ptr<const Policy>> p =
      Policy::Parse(absl::StrCat("clients { name: \"own\" match { uids: ", self,
                                 " } heaps: \"*\" "
                                 "max_cpu_access: CPU_ACCESS_READ attach_devices: \"*\" }\n"
                                 "clients { name: \"rw\" match { uids: ",
                                 self + 1,
                                 " } heaps: \"*\" "
                                 "max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: \"*\" }\n"
                                 "clients { name: \"other\" match { uids: ",
                                 self + 2,
                                 " } heaps: \"*\" "
                                 "max_cpu_access: CPU_ACCESS_READ attach_devices: \"*\" }\n"
                                 "clients { name: \"all\" match { any: true } heaps: \"*\" "
                                 "max_cpu_access: CPU_ACCESS_READ attach_devices: \"*\" }\n"),
                    "u.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  Abilities memfd("memfd", {CpuAccess::kRead, CpuAccess::kReadWrite}, true);
  EXPECT_TRUE((*p)->BackendProblems(memfd).empty());  // it binds every uid
  memfd.unbound_ = self;
  const std::vector<std::string> problems = (*p)->BackendProblems(memfd);
  ASSERT_EQ(problems.size(), 2u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0],
                                "client 'own': backend 'memfd' cannot keep "
                                "hallocd's own uid"))
      << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1], "client 'all'")) << problems[1];
}

// Rules that validate but whose every Allocate the backend hallocd runs
// would refuse are named, each for its reason; the rest are not.
TEST(PolicyTest, NamesRulesTheBackendCannotServe) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"fine\" match { uids: 1 } heaps: \"memfd\" max_cpu_access: CPU_ACCESS_READ "
      "attach_devices: \"*\" }\n"
      "clients { name: \"receiver\" match { uids: 2 } max_cpu_access: CPU_ACCESS_READ_WRITE "
      "attach_devices: \"*\" }\n"
      "clients { name: \"elsewhere\" match { uids: 3 } heaps: \"dmaheap\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: \"*\" }\n"
      "clients { name: \"blind\" match { uids: 4 } heaps: \"*\" attach_devices: \"*\" }\n"
      "clients { name: \"vgem_only\" match { uids: 5 } heaps: \"*\" max_cpu_access: "
      "CPU_ACCESS_READ_WRITE "
      "attach_devices: \"vgem\" }\n"
      "clients { name: \"no_device\" match { uids: 6 } heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE }\n",
      "b.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  // memfd as it is without /dev/udmabuf: read-only views, no CPU-less ones,
  // and no device can attach at all.
  Abilities memfd("memfd", {CpuAccess::kRead, CpuAccess::kReadWrite}, true);
  std::vector<std::string> problems = (*p)->BackendProblems(memfd);
  ASSERT_EQ(problems.size(), 2u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0],
                                "client 'elsewhere': heaps [dmaheap] do not name "
                                "backend 'memfd'"))
      << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1],
                                "client 'blind': backend 'memfd' cannot enforce "
                                "max_cpu_access none"))
      << problems[1];
  // A plain dma-buf: read-write only, any device attaches.
  Abilities dmaheap("dmaheap", {CpuAccess::kReadWrite}, false);
  problems = (*p)->BackendProblems(dmaheap);
  ASSERT_EQ(problems.size(), 5u) << absl::StrJoin(problems, "\n");
  EXPECT_TRUE(absl::StrContains(problems[0], "client 'fine': heaps [memfd]")) << problems[0];
  EXPECT_TRUE(absl::StrContains(problems[1],
                                "client 'fine': backend 'dmaheap' cannot enforce "
                                "max_cpu_access read nor anything narrower"))
      << problems[1];
  EXPECT_TRUE(absl::StrContains(problems[2], "client 'blind': backend 'dmaheap' cannot enforce"))
      << problems[2];
  EXPECT_TRUE(absl::StrContains(problems[3],
                                "client 'vgem_only': backend 'dmaheap' cannot limit "
                                "which devices attach a buffer (attach_devices"))
      << problems[3];
  EXPECT_TRUE(absl::StrContains(problems[4],
                                "client 'no_device': backend 'dmaheap' cannot limit "
                                "which devices attach a buffer (no attach_devices"))
      << problems[4];
  // The built-in default asks nothing of a backend.
  EXPECT_TRUE(Policy::Default()->BackendProblems(dmaheap).empty());
}

TEST(PolicyTest, SessionLimitsAreRead) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
      "clients { name: \"a\" match { any: true } }\n"
      "sessions { max_per_uid: 4 max_total: 100 connects_per_second: 7 }\n",
      "limits.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->max_sessions_per_uid(), 4u);
  EXPECT_EQ((*p)->max_sessions(), 100u);
  EXPECT_EQ((*p)->connects_per_second(), 7u);
  p = Policy::Parse("clients { name: \"a\" match { any: true } }\n", "defaults.textproto");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->connects_per_second(), kDefaultConnectsPerSecond);
}

}  // namespace
}  // namespace halloc
