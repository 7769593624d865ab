// halloc-camera against an in-process hallocd: frames per second, grant
// tokens, a written frame, and its exit codes.
#include <drm_fourcc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/camera/pattern.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"

namespace halloc::camera {
namespace {

struct Result {
  int exit_code = -1;
  std::string out;
};

// Runs the tool (from the test's runfiles) with `args`; stdout and stderr.
Result RunTool(const std::vector<std::string>& args) {
  std::string cmd = "clients/camera/halloc-camera";
  for (const std::string& a : args) absl::StrAppend(&cmd, " '", a, "'");
  absl::StrAppend(&cmd, " 2>&1");
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(HallocCameraTool, SyntheticFramesSharedAndWritten) {
  auto daemon = testing::TestDaemon::Start();
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const ConnectOptions c = (*daemon)->connect_options();
  const std::string raw = absl::StrCat((*daemon)->dir(), "/frame.raw");
  Result r = RunTool({"--control_socket=" + c.control_socket,
                  "--broker_socket=" + c.broker_socket, "--synthetic",
                  "--frames=5", "--fps=0", "--width=320", "--height=240",
                  absl::StrCat("--share_uid=", getuid()), "--write=" + raw,
                  "--write_frame=3"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("synthetic: XRGB8888 320x240, bytesperline 1280"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("frame 4 buffer"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" grant "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("frames per second"), std::string::npos) << r.out;
  struct stat st = {};
  ASSERT_EQ(stat(raw.c_str(), &st), 0) << raw;
  EXPECT_EQ(st.st_size, 320 * 240 * 4);
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  FILE* f = fopen(raw.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(fread(bytes.data(), 1, bytes.size(), f), bytes.size());
  fclose(f);
  v1::BufferLayout layout;
  layout.set_format(DRM_FORMAT_XRGB8888);
  layout.set_width(320);
  layout.set_height(240);
  layout.set_size(bytes.size());
  v1::PlaneLayout* plane = layout.add_planes();
  plane->set_stride(1280);
  plane->set_size(bytes.size());
  absl::StatusOr<uint32_t> counter = ReadCounter(layout, bytes.data(), bytes.size());
  ASSERT_TRUE(counter.ok()) << counter.status();
  EXPECT_EQ(*counter, 3u) << "--write_frame=3";
  unlink(raw.c_str());
}

TEST(HallocCameraTool, ExitCodes) {
  auto daemon = testing::TestDaemon::Start();
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const ConnectOptions c = (*daemon)->connect_options();
  Result r = RunTool({"--control_socket=" + c.control_socket,
                  "--broker_socket=" + c.broker_socket, "--device=/dev/null"});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("/dev/null is not a V4L2 device"), std::string::npos) << r.out;
  r = RunTool({"--frames=3"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("--device or --synthetic"), std::string::npos) << r.out;
  r = RunTool({"--synthetic", "--format=NOPE"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = RunTool({"--synthetic", "--frames=3", "--write_frame=3", "--write=/dev/null"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("past the last of --frames=3"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace halloc::camera
