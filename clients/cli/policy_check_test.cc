// `hallocctl policy check FILE` (cli::PolicyCheck), offline: a valid file
// is OK with its rules listed, and a note names the rules that match by
// executable alone (any local user can pass for one where unprivileged
// user namespaces are on); an invalid one is refused with its line.
#include <fstream>
#include <sstream>
#include <string>

#include "clients/cli/commands.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"

namespace halloc::cli {
namespace {

struct Checked {
  int code;
  std::string out, err;
};

Checked Check(const testing::TempDir& dir, const std::string& text) {
  const std::string file = dir / "policy.textproto";
  std::ofstream(file) << text;
  std::ostringstream out, err;
  const int code = PolicyCheck(file, out, err);
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

}  // namespace
}  // namespace halloc::cli
