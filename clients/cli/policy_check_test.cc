// `hallocctl policy check FILE` (cli::PolicyCheck), offline: a valid file
// is OK with its rules listed, and a note names the rules that match by
// executable alone (any local user can pass for one where unprivileged
// user namespaces are on); an invalid one is refused with its line.
#include <grp.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "clients/cli/commands.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"
#include "service/util/trusted_path.h"

namespace halloc::cli {
namespace {

struct Checked {
  int code;
  std::string out, err;
};

Checked Check(const testing::TempDir& dir, const std::string& text,
              const std::optional<Judge>& as = std::nullopt) {
  const std::string file = dir / "policy.textproto";
  std::ofstream(file) << text;
  std::ostringstream out, err;
  const int code = PolicyCheck(file, out, err, as);
  return {code, out.str(), err.str()};
}

TEST(PolicyCheckTest, NamesRulesThatMatchByExecutableAlone) {
  testing::TempDir dir("policy-check");
  Checked c = Check(dir,
                    "clients { name: \"cam\" match { exe: \"/usr/bin/cam\" } }\n"
                    "clients { name: \"comp\" match { exe: \"/usr/bin/comp\" uids: 1001 } }\n");
  EXPECT_EQ(c.code, kExitOk) << c.err;
  EXPECT_NE(c.out.find("OK, 2 client rules: cam comp"), std::string::npos) << c.out;
  EXPECT_NE(c.err.find("note: cam match by executable alone"), std::string::npos) << c.err;
  c = Check(dir, "clients { name: \"comp\" match { exe: \"/usr/bin/comp\" uids: 1001 } }\n");
  EXPECT_EQ(c.code, kExitOk) << c.err;
  EXPECT_EQ(c.err.find("executable alone"), std::string::npos) << c.err;
}

TEST(PolicyCheckTest, NotesExeRulesThatMatchNothing) {
  testing::TempDir dir("policy-check");
  const Checked c =
      Check(dir, "clients { name: \"cam\" match { exe: \"/nonexistent/cam\" uids: 1 } }\n");
  EXPECT_EQ(c.code, kExitOk) << c.err;
  EXPECT_NE(c.err.find("note: client 'cam': exe '/nonexistent/cam'"), std::string::npos) << c.err;
}

TEST(PolicyCheckTest, AnInvalidFileIsRefusedWithItsLine) {
  testing::TempDir dir("policy-check");
  const Checked c = Check(dir,
                          "clients { name: \"all\" match { any: true } }\n"
                          "clients { name: \"cam\" match { uids: 1001 } }\n");
  EXPECT_EQ(c.code, kExitRefused);
  EXPECT_NE(c.err.find("policy.textproto:2:"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("can never match"), std::string::npos) << c.err;
}

// Run by root, the check judges exe paths and the file's place as hallocd's
// user would (a stand-in uid here: the user hallocd need not exist): a
// directory closed to that user (by its mode, or by a group that user is
// not in) closes the rule behind it, and that user's own files are trusted
// as hallocd's own, where root's judgement says the opposite of all three.
// Afterwards this process looks at files as itself again, groups included.
TEST(PolicyCheckTest, RootJudgesAsHallocdsUser) {
  constexpr uid_t kStandIn = 64990;
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (it looks at files as another user)";
  // Root's group among this process's (root's may be none here), which
  // opens `grouped` to whoever keeps it: the judge must not.
  std::vector<gid_t> original(::getgroups(0, nullptr));
  ASSERT_EQ(::getgroups(original.size(), original.data()), static_cast<int>(original.size()));
  const gid_t root_group = 0;
  ASSERT_EQ(::setgroups(1, &root_group), 0);
  absl::Cleanup restore = [&original] { ::setgroups(original.size(), original.data()); };
  const std::vector<gid_t> groups_before = {root_group};
  testing::TempDir dir("policy-check", 0755);
  const std::string closed = dir / "closed", grouped = dir / "grouped", theirs = dir / "theirs";
  ASSERT_EQ(::mkdir(closed.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir(grouped.c_str(), 0750), 0);  // root's group: root's own, not the user's
  for (const std::string& f : {closed + "/cam", grouped + "/isp", theirs}) {
    std::ofstream(f) << "a program\n";  // not a script, which would be noted
    ASSERT_EQ(::chmod(f.c_str(), 0755), 0);
  }
  ASSERT_EQ(::chown(theirs.c_str(), kStandIn, kStandIn), 0);
  const std::string policy =
      absl::StrCat("clients { name: \"cam\" match { exe: \"", closed, "/cam\" uids: 1 } }\n",
                   "clients { name: \"isp\" match { exe: \"", grouped, "/isp\" uids: 1 } }\n",
                   "clients { name: \"comp\" match { exe: \"", theirs, "\" uids: 1 } }\n");
  const Checked root = Check(dir, policy);
  EXPECT_EQ(root.code, kExitOk) << root.err;
  EXPECT_EQ(root.err.find("closed to this process"), std::string::npos) << root.err;
  EXPECT_NE(root.err.find("'comp': exe '" + theirs + "' is a file another user may change"),
            std::string::npos)
      << root.err;

  const Checked judged = Check(dir, policy, Judge{kStandIn, kStandIn, "stand-in"});
  if (judged.err.find("cannot look at files as user") != std::string::npos) {
    GTEST_SKIP() << "cannot take uid " << kStandIn << "'s filesystem ids here: " << judged.err;
  }
  EXPECT_EQ(judged.code, kExitOk) << judged.err;
  EXPECT_NE(judged.err.find("note: judged as user stand-in (uid 64990)"), std::string::npos)
      << judged.err;
  for (const std::string& exe : {closed + "/cam", grouped + "/isp"}) {
    EXPECT_NE(judged.err.find("exe '" + exe +
                              "': Permission denied: a directory on the way is "
                              "closed"),
              std::string::npos)
        << exe << "\n"
        << judged.err;
  }
  EXPECT_EQ(judged.err.find("'comp'"), std::string::npos) << judged.err;
  // Back to itself.
  EXPECT_EQ(static_cast<uid_t>(::setfsuid(-1)), 0u);
  EXPECT_EQ(static_cast<gid_t>(::setfsgid(-1)), 0u);
  std::vector<gid_t> groups_after(::getgroups(0, nullptr));
  ASSERT_EQ(::getgroups(groups_after.size(), groups_after.data()),
            static_cast<int>(groups_after.size()));
  EXPECT_EQ(groups_after, groups_before);
  EXPECT_FALSE(TrustedOwner(kStandIn));
}

}  // namespace
}  // namespace halloc::cli
