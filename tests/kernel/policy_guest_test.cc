// The example policy's least privilege, on the module: the camera, the
// compositor and an app are separate processes with their own uids (the
// integration tests' peer binary), talking to hallocd on the halloc backend,
// and every right the policy withholds is refused by the kernel for the
// fd's holder, not just by hallocd.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xf86drm.h>

#include <climits>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "tests/integration/peer_process.h"
#include "tests/kernel/example_policy.h"
#include "tests/kernel/daemon_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::halloc::Peer;

constexpr uid_t kCamera = 1001, kCompositor = 1002, kApp = 1003;

// A file of this binary's runfiles tree (the guest runs it outside Bazel).
std::string Runfile(const std::string& path) {
  char exe[PATH_MAX] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return std::string(exe, n > 0 ? n : 0) + ".runfiles/halloc/" + path;
}

bool HasDrmDriver(const std::string& driver) {
  DIR* dir = opendir("/dev/dri");
  if (dir == nullptr) return false;
  bool found = false;
  while (dirent* e = readdir(dir)) {
    if (std::string(e->d_name).rfind("card", 0) != 0) continue;
    UniqueFd card(open(("/dev/dri/" + std::string(e->d_name)).c_str(), O_RDWR | O_CLOEXEC));
    if (!card.valid()) continue;
    drmVersionPtr v = drmGetVersion(card.get());
    found = found || (v != nullptr && driver == v->name);
    drmFreeVersion(v);
  }
  closedir(dir);
  // tools/kernel-test.sh loads vgem and vkms: there, a missing one fails
  // (its checks below would be dropped unseen).
  if (!found && !Env("HALLOC_KO").empty()) {
    ADD_FAILURE() << "no " << driver << " DRM device, though tools/kernel-test.sh loads it";
  }
  return found;
}

class LeastPrivilegeTest : public HallocTest {
 protected:
  void SetUp() override {
    HallocTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (!halloc::CanSwitchUid(4242)) GTEST_SKIP() << "cannot run peers as other uids";
    // The peers are unprivileged uids; in this throw-away guest the DRM
    // cards and /dev/halloc are root's (a real system lets the camera's and
    // the compositor's groups in through udev rules). Rights on the buffers
    // do not depend on these modes: they come with each fd.
    for (const std::string& node : {std::string(HALLOC_CONTROL_PATH)}) {
      ASSERT_EQ(chmod(node.c_str(), 0666), 0) << node;
    }
    if (DIR* dir = opendir("/dev/dri")) {
      while (dirent* e = readdir(dir)) {
        if (std::string(e->d_name).rfind("card", 0) == 0) {
          chmod(("/dev/dri/" + std::string(e->d_name)).c_str(), 0666);
        }
      }
      closedir(dir);
    }
    auto d = StartDaemon("halloc", kExamplePolicy);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }
  void TearDown() override { daemon_.reset(); }

  std::unique_ptr<Peer> Start(uid_t uid) {
    return std::make_unique<Peer>(Runfile("tests/integration/peer"),
                                  daemon_->connect_options(), uid);
  }

  std::unique_ptr<halloc::testing::TestDaemon> daemon_;
};

TEST_F(LeastPrivilegeTest, CameraCompositorAndAppOnTheModule) {
  auto camera = Start(kCamera), compositor = Start(kCompositor), app = Start(kApp);
  const std::string frame = camera->Value("alloc 1048576 camera_output,cpu_write_often");
  ASSERT_FALSE(frame.empty());
  ASSERT_EQ(camera->Do("write " + frame + " 90"), "ok");
  // The camera's own frame attaches to its capture device only.
  if (HasDrmDriver("vgem")) {
    EXPECT_EQ(camera->Do("device " + frame + " vgem"), "err EPERM");
  }
  // It shares with the compositor, never with an app.
  EXPECT_EQ(camera->Do("share " + frame + " name:app read"), "err PERMISSION_DENIED");
  const std::string token = camera->Value("share " + frame + " name:compositor read");
  ASSERT_FALSE(token.empty());
  EXPECT_EQ(app->Do("import " + token), "err PERMISSION_DENIED");

  EXPECT_EQ(compositor->Do("import " + token), "ok " + frame + " CPU_ACCESS_READ");
  EXPECT_EQ(compositor->Do("read " + frame), "ok 90");
  // Zero-copy: the compositor's fd is a view of the very same kernel buffer.
  const std::string kernel_id = camera->Value("kinfo " + frame);
  ASSERT_FALSE(kernel_id.empty());
  EXPECT_EQ(compositor->Do("kinfo " + frame), "ok " + kernel_id + " 1") << "HALLOC_CPU_READ";
  // Its write paths are refused by the kernel: a writable mapping by the VFS
  // (the view's file is read-only) and the CPU write bracket by the module.
  EXPECT_EQ(compositor->Do("mmap-rw " + frame), "err EACCES");
  EXPECT_EQ(compositor->Do("fork-mmap-rw " + frame), "err EACCES");
  EXPECT_EQ(compositor->Do("sync-write " + frame), "err EPERM");
  EXPECT_EQ(compositor->Do("write " + frame + " 1"), "err PERMISSION_DENIED");
  // Its view attaches to its display only.
  if (HasDrmDriver("vgem")) {
    EXPECT_EQ(compositor->Do("device " + frame + " vgem"), "err EPERM");
  }
  if (HasDrmDriver("vkms")) {
    EXPECT_EQ(compositor->Do("device " + frame + " vkms"), "ok");
  } else {
    RecordProperty("vkms", "not loaded: the allowed attach is not checked here");
  }
  // It cannot pass the frame on with more rights, nor to the app.
  EXPECT_EQ(compositor->Do("share " + frame + " name:app read"), "err PERMISSION_DENIED");
  EXPECT_EQ(camera->Do("read " + frame), "ok 90") << "the frame is untouched";
}

}  // namespace
}  // namespace halloc_test
