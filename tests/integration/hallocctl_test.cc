// hallocctl against an in-process daemon: output a person can check, and
// exit codes that say what went wrong.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

struct Result {
  int code;
  std::string out;  // stdout and stderr
};

class HallocctlTest : public testing::HallocTest {
 protected:
  Result Run(const std::vector<std::string>& args, bool reachable = true) {
    const ConnectOptions o = daemon().connect_options();
    const std::string cmd = absl::StrCat(
        "HALLOC_CONTROL_SOCKET=", reachable ? o.control_socket : "/nonexistent",
        " HALLOC_BROKER_SOCKET=", reachable ? o.broker_socket : "/nonexistent",
        " ", getenv("TEST_SRCDIR"), "/halloc/clients/cli/hallocctl ",
        absl::StrJoin(args, " "), " 2>&1");
    Result r{-1, ""};
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
  }
};

TEST_F(HallocctlTest, AllocatePrintsTheLayout) {
  Result r = Run({"allocate", "--format", "NV12", "--width", "1920", "--height",
                  "1080", "--usage", "camera_output,composer_overlay"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "plane 1: offset 2073600, stride 1920")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "camera_output")) << r.out;
}

TEST_F(HallocctlTest, RefusalsAndBadCommandLinesHaveTheirExitCodes) {
  Result bad_usage = Run({"allocate", "--size", "4096", "--usage", "no_such_usage"});
  EXPECT_EQ(bad_usage.code, 2) << bad_usage.out;
  Result refused = Run({"allocate", "--size", "99999999999999"});
  EXPECT_EQ(refused.code, 1) << refused.out;
  EXPECT_TRUE(absl::StrContains(refused.out, "INVALID_ARGUMENT")) << refused.out;
  EXPECT_EQ(Run({"frobnicate"}).code, 2);
  EXPECT_EQ(Run({"describe"}).code, 2);
  EXPECT_EQ(Run({"describe", "abc"}).code, 2);
  EXPECT_EQ(Run({"describe", "12345"}).code, 1);
  Result down = Run({"stats"}, /*reachable=*/false);
  EXPECT_EQ(down.code, 3) << down.out;
  EXPECT_TRUE(absl::StrContains(down.out, "is hallocd running?")) << down.out;
}

TEST_F(HallocctlTest, SupportedListsFormatsAndAgreesWithAllocate) {
  Result table = Run({"supported"});
  EXPECT_EQ(table.code, 0);
  for (const char* f : {"NV12", "P010", "ARGB8888", "YVU420", "BLOB"}) {
    EXPECT_TRUE(absl::StrContains(table.out, f)) << f;
  }
  EXPECT_EQ(Run({"supported", "--format", "NV12", "--width", "64", "--height", "64"}).code, 0);
  EXPECT_EQ(Run({"supported", "--format", "NV12", "--width", "0", "--height", "64"}).code, 1);
  EXPECT_EQ(Run({"allocate", "--format", "NV12", "--width", "0", "--height", "64"}).code, 1);
}

TEST_F(HallocctlTest, ListAllShowsOtherSessionsBuffersAndStatsCounts) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(8192, 0, "mine"));
  ASSERT_TRUE(b.ok());
  Result list = Run({"list", "--all"});
  EXPECT_EQ(list.code, 0) << list.out;
  EXPECT_TRUE(absl::StrContains(list.out, "mine")) << list.out;
  Result desc = Run({"describe", std::to_string(b->id())});
  EXPECT_EQ(desc.code, 0) << desc.out;
  Result stats = Run({"stats"});
  EXPECT_TRUE(absl::StrContains(stats.out, "live buffers  1")) << stats.out;
}

}  // namespace
}  // namespace halloc
