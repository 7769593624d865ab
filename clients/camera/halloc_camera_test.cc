// halloc-camera against an in-process hallocd: frames per second, grant
// tokens, a written frame, and its exit codes.
#include <drm_fourcc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <optional>
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
  Result r = RunTool({"--control_socket=" + c.control_socket, "--broker_socket=" + c.broker_socket,
                      "--synthetic", "--frames=5", "--fps=0", "--width=320", "--height=240",
                      absl::StrCat("--share_uid=", getuid()), "--share_timeout=100ms",
                      "--write=" + raw, "--write_frame=3"});
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

// A consumer holds each shared frame until the next one is printed: with
// two buffers, the source would draw the frame after that into the buffer
// it holds, were the buffer given back to it at once.
TEST(HallocCameraTool, ASharedFrameIsNotDrawnOverWhileItsConsumerHoldsIt) {
  auto daemon = testing::TestDaemon::Start();
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const ConnectOptions c = (*daemon)->connect_options();
  absl::StatusOr<Client> consumer = (*daemon)->Connect();
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  const std::string cmd = absl::StrCat(
      "clients/camera/halloc-camera --control_socket=", c.control_socket,
      " --broker_socket=", c.broker_socket,
      " --synthetic --frames=8 --fps=0 --width=320 --height=240 --buffers=2 --share_uid=", getuid(),
      " --share_timeout=30s");
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  struct Held {
    uint32_t sequence;
    Buffer buffer;
    Mapping map;
  };
  std::optional<Held> held;
  // The frame's counter as its consumer reads it now.
  auto counter = [](const Held& h) {
    return ReadCounter(h.buffer.layout(), h.map.as<uint8_t>(), h.map.size());
  };
  int frames = 0;
  char line[512];
  while (fgets(line, sizeof(line), p) != nullptr) {
    uint32_t seq = 0;
    uint64_t id = 0;
    char token[64] = {};
    if (sscanf(line, "frame %u buffer %" SCNu64 " grant %63s", &seq, &id, token) != 3) continue;
    ++frames;
    absl::StatusOr<Buffer> got = consumer->Import(token);
    ASSERT_TRUE(got.ok()) << "frame " << seq << ": " << got.status();
    absl::StatusOr<Mapping> map = got->Map(Access::kRead);
    ASSERT_TRUE(map.ok()) << map.status();
    Held now{seq, *std::move(got), *std::move(map)};
    absl::StatusOr<uint32_t> n = counter(now);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, seq);
    if (held) {
      // Still the frame it was, after the source went on to the next one.
      absl::StatusOr<uint32_t> was = counter(*held);
      ASSERT_TRUE(was.ok()) << was.status();
      EXPECT_EQ(*was, held->sequence) << "frame " << held->sequence << " drawn over while held";
      const uint64_t let_go = held->buffer.id();
      held.reset();
      ASSERT_TRUE(consumer->Release(let_go).ok());
    }
    held.emplace(std::move(now));
    // The last one: halloc-camera waits for it before it exits.
    if (frames == 8) {
      const uint64_t let_go = held->buffer.id();
      held.reset();
      ASSERT_TRUE(consumer->Release(let_go).ok());
    }
  }
  const int status = pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(frames, 8);
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
  for (const char* uid : {"--share_uid=4294967296", "--share_uid=4294967295", "--share_uid=-2"}) {
    r = RunTool({"--synthetic", uid});
    EXPECT_EQ(r.exit_code, 2) << uid << ": " << r.out;
    EXPECT_NE(r.out.find("is no uid"), std::string::npos) << r.out;
  }
  r = RunTool({"--synthetic", "--share_uid=0", "--share_timeout=0s"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("--share_timeout must be positive"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace halloc::camera
