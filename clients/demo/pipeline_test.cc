// The demo's pipeline on the host: synthetic camera → an in-process hallocd
// (memfd) → each frame shared read-only → a viewer process (halloc_demo
// --role=viewer, from the runfiles) imports and presents it to weston
// headless → weston's screenshot shows the last frame's colour bars and
// counter.
#include "clients/demo/pipeline.h"

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/png/png.h"
#include "clients/testing/test_daemon.h"
#include "clients/wayland/weston.h"
#include "gtest/gtest.h"

namespace halloc::demo {
namespace {

constexpr char kViewer[] = "clients/demo/halloc_demo";

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/weston", X_OK) != 0) {
      GTEST_SKIP() << "weston is not installed (Debian package weston; "
                      "tools/run setup installs it)";
    }
    absl::StatusOr<std::unique_ptr<testing::TestDaemon>> d = testing::TestDaemon::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    absl::StatusOr<std::unique_ptr<wayland::Weston>> w =
        wayland::Weston::Start({.width = kWidth, .height = kHeight});
    ASSERT_TRUE(w.ok()) << w.status();
    weston_ = *std::move(w);
  }

  static constexpr int kWidth = 320;
  static constexpr int kHeight = 240;
  std::unique_ptr<testing::TestDaemon> daemon_;
  std::unique_ptr<wayland::Weston> weston_;
};

TEST_F(PipelineTest, CameraFramesReachWestonThroughAReadOnlyViewer) {
  absl::StatusOr<Client> camera = daemon_->Connect();
  ASSERT_TRUE(camera.ok()) << camera.status();
  absl::StatusOr<std::unique_ptr<ViewerProcess>> viewer =
      ViewerProcess::Spawn(kViewer, daemon_->connect_options(), weston_->socket());
  ASSERT_TRUE(viewer.ok()) << viewer.status();
  PipelineOptions options;
  options.width = kWidth;
  options.height = kHeight;
  options.frames = 30;
  absl::StatusOr<PipelineResult> r = RunCamera(*camera, **viewer, options);
  ASSERT_TRUE(r.ok()) << r.status() << "\nweston: " << weston_->LogTail();
  EXPECT_EQ(r->frames, options.frames);
  EXPECT_EQ(r->last_sequence, static_cast<uint32_t>(options.frames - 1));
  EXPECT_EQ(r->same_memory, options.frames) << "imports of other memory";
  EXPECT_EQ(r->write_refused, options.frames) << "writable read-only imports";
  // A read-only memfd cannot be a wl_shm pool (clients/wayland/README.md).
  EXPECT_EQ(r->path, "wl_shm copy");
  printf("pipeline: %d frames %dx%d in %.3f s = %.1f frames/s (%s)\n", r->frames, kWidth, kHeight,
         r->seconds, r->frames_per_second, r->camera.c_str());
  RecordProperty("frames_per_second", absl::StrCat(r->frames_per_second));

  const std::string png_path = absl::StrCat(::testing::TempDir(), "/pipeline.png");
  absl::Status shot = weston_->Screenshot(png_path);
  ASSERT_TRUE(shot.ok()) << shot;
  absl::StatusOr<png::Image> img = png::ReadPng(png_path);
  ASSERT_TRUE(img.ok()) << img.status();
  const ScreenCheck check = CheckScreen(*img, kWidth, kHeight, r->last_sequence);
  EXPECT_GT(check.bar_probes, 100);
  EXPECT_EQ(check.bar_mismatches, 0) << check.first_mismatch;
  ASSERT_TRUE(check.counter.ok()) << check.counter.status();
  EXPECT_EQ(*check.counter, r->last_sequence);
  // An earlier frame's bars are elsewhere: the check can tell frames apart.
  const ScreenCheck first = CheckScreen(*img, kWidth, kHeight, 0);
  EXPECT_GT(first.bar_mismatches, 0);
  EXPECT_FALSE(first.ok(0));

  absl::Status finished = (*viewer)->Finish(absl::Seconds(5));
  EXPECT_TRUE(finished.ok()) << finished;
}

// A viewer that cannot reach the compositor: the camera side reports the
// viewer's own error, in time.
TEST_F(PipelineTest, AViewerFailureReachesTheCamera) {
  absl::StatusOr<Client> camera = daemon_->Connect();
  ASSERT_TRUE(camera.ok()) << camera.status();
  absl::StatusOr<std::unique_ptr<ViewerProcess>> viewer =
      ViewerProcess::Spawn(kViewer, daemon_->connect_options(), weston_->socket() + ".absent");
  ASSERT_TRUE(viewer.ok()) << viewer.status();
  PipelineOptions options;
  options.width = kWidth;
  options.height = kHeight;
  options.frames = 3;
  absl::StatusOr<PipelineResult> r = RunCamera(*camera, **viewer, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal) << r.status();
  EXPECT_NE(r.status().message().find("viewer: UNAVAILABLE"), std::string::npos) << r.status();
  EXPECT_FALSE((*viewer)->Finish(absl::Seconds(5)).ok());
}

TEST(CheckScreenTest, AWrongSizeIsNotAMatch) {
  png::Image img;
  img.width = 10;
  img.height = 10;
  img.pixels.assign(100, 0xff000000u);
  const ScreenCheck c = CheckScreen(img, 320, 240, 0);
  EXPECT_FALSE(c.ok(0));
  EXPECT_NE(c.first_mismatch.find("10x10"), std::string::npos) << c.first_mismatch;
}

}  // namespace
}  // namespace halloc::demo
