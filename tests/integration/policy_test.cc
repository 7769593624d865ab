// The example camera / compositor / app policy, end to end: every client is
// a separate process running as its own uid (the peer binary's shell mode),
// so identity really comes from the kernel.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/testing/test_daemon.h"
#include "gtest/gtest.h"
#include "tests/integration/peer_process.h"

namespace halloc {
namespace {

constexpr uid_t kCamera = 1001, kCompositor = 1002, kApp = 1003, kApp2 = 1004,
                kStranger = 4242;

std::string Runfile(const std::string& path) {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/", path);
}

class PolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CanSwitchUid(kStranger)) {
      GTEST_SKIP() << "cannot switch uids here (not root, or a user namespace "
                      "without them): the multi-client policy test needs real uids";
    }
    policy_file_ = policy_dir_ / "policy.textproto";
    std::filesystem::copy_file(Runfile("service/policy/example.textproto"), policy_file_);
    // hallocd reads no group-writable policy (a checkout made under umask 002).
    std::filesystem::permissions(policy_file_, std::filesystem::perms(0644));
    DaemonOptions options = testing::TestDaemon::DefaultOptions();
    options.policy_file = policy_file_;
    absl::StatusOr<std::unique_ptr<testing::TestDaemon>> d =
        testing::TestDaemon::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    absl::StatusOr<Client> admin = daemon_->Connect();  // root: rule "admin"
    ASSERT_TRUE(admin.ok());
    admin_.emplace(std::move(*admin));
  }
  void TearDown() override {
    admin_.reset();
    daemon_.reset();
  }
  std::unique_ptr<Peer> Start(uid_t uid) {
    return std::make_unique<Peer>(Runfile("tests/integration/peer"), daemon_->connect_options(), uid);
  }
  uint64_t Denials(const std::string& rule) {
    absl::StatusOr<v1::StatsResponse> s = admin_->Stats();
    if (!s.ok()) return 0;
    auto it = s->denials_by_rule().find(rule);
    return it == s->denials_by_rule().end() ? 0 : it->second;
  }
  // hallocd ends a session when it sees the broker connection close,
  // asynchronously: these wait (up to 20 s) for what a test expects after.
  bool WaitSessions(uint64_t n) {
    for (int i = 0; i < 2000; ++i) {
      if (admin_->Stats()->sessions() == n) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }
  bool WaitLive(uint64_t n) {
    for (int i = 0; i < 2000; ++i) {
      if (admin_->Stats()->live_buffers() == n) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  testing::TempDir policy_dir_{"policy"};
  std::string policy_file_;
  std::unique_ptr<testing::TestDaemon> daemon_;
  std::optional<Client> admin_;
};

TEST_F(PolicyTest, AllocationIsLimitedToTheClientsUsagesSizesAndRule) {
  auto camera = Start(kCamera), app = Start(kApp), stranger = Start(kStranger);
  EXPECT_TRUE(absl::StartsWith(camera->Do("alloc 1048576 camera_output,cpu_write_often"), "ok"));
  EXPECT_EQ(app->Do("alloc 4096 camera_output"), "err PERMISSION_DENIED");
  EXPECT_EQ(app->Do("alloc 17825792 cpu_write_often"), "err PERMISSION_DENIED");  // > 16 MiB
  EXPECT_EQ(stranger->Do("alloc 4096 0"), "err PERMISSION_DENIED");  // no rule: default deny
  EXPECT_EQ(Denials("app"), 2u);
  EXPECT_EQ(Denials("(no rule)"), 1u);
  // The compositor may read but never write with the CPU.
  auto compositor = Start(kCompositor);
  EXPECT_EQ(compositor->Do("alloc 4096 cpu_write_often"), "err PERMISSION_DENIED");
  const std::string tex = compositor->Value("alloc 4096 gpu_texture");
  ASSERT_FALSE(tex.empty());
  EXPECT_EQ(compositor->Do("write " + tex + " 1"), "err PERMISSION_DENIED");
}

TEST_F(PolicyTest, QuotaOfOneClientDoesNotStopAnother) {
  auto app = Start(kApp), app_again = Start(kApp), compositor = Start(kCompositor);
  for (int i = 0; i < 4; ++i) {  // 4 x 16 MiB = the app's 64 MiB quota
    ASSERT_TRUE(absl::StartsWith(app->Do("alloc 16777216 cpu_write_often"), "ok")) << i;
  }
  EXPECT_EQ(app->Do("alloc 4096 cpu_write_often"), "err RESOURCE_EXHAUSTED");
  // The quota is the client's, not the session's.
  EXPECT_EQ(app_again->Do("alloc 4096 cpu_write_often"), "err RESOURCE_EXHAUSTED");
  // Another uid under the same rule is another client with its own quota.
  auto app2 = Start(kApp2);
  EXPECT_TRUE(absl::StartsWith(app2->Do("alloc 4096 cpu_write_often"), "ok"));
  EXPECT_TRUE(absl::StartsWith(compositor->Do("alloc 4194304 gpu_texture"), "ok"));
  EXPECT_GE(Denials("app"), 2u);
  // Freeing brings the app back under quota.
  app->Quit();
  ASSERT_TRUE(WaitLive(2));  // app2's and the compositor's stay
  EXPECT_TRUE(absl::StartsWith(app_again->Do("alloc 4096 cpu_write_often"), "ok"));
  absl::StatusOr<v1::DumpResponse> dump = admin_->Dump();
  ASSERT_TRUE(dump.ok()) << dump.status();
  bool saw_app2 = false;
  for (const auto& c : dump->clients()) {
    if (c.client() == "app" && c.uid() == kApp2) {
      saw_app2 = true;
      EXPECT_EQ(c.buffers(), 1u);
      EXPECT_EQ(c.quota_buffers(), 16u);
    }
  }
  EXPECT_TRUE(saw_app2);
}

TEST_F(PolicyTest, SharingFollowsShareToReceiveFromAndNeverWidensRights) {
  auto camera = Start(kCamera), compositor = Start(kCompositor), app = Start(kApp);
  const std::string frame = camera->Value("alloc 65536 camera_output,cpu_write_often");
  ASSERT_FALSE(frame.empty());
  ASSERT_EQ(camera->Do("write " + frame + " 77"), "ok");
  // Forbidden peers.
  EXPECT_EQ(camera->Do("share " + frame + " name:app same"), "err PERMISSION_DENIED");
  EXPECT_EQ(camera->Do("share " + frame + " uid:1003 same"), "err PERMISSION_DENIED");
  // More than the receiver's rule allows (compositor: read at most).
  EXPECT_EQ(camera->Do("share " + frame + " name:compositor rw"), "err PERMISSION_DENIED");
  // A name camera's share_to does not list: refused as "app" is, rule or
  // not (the answers do not list the policy's clients).
  EXPECT_EQ(camera->Do("share " + frame + " name:nosuch same"), "err PERMISSION_DENIED");
  // Allowed: unspecified rights are clamped to the receiver's.
  const std::string token = camera->Value("share " + frame + " name:compositor same");
  ASSERT_FALSE(token.empty());
  // A grant for the compositor is useless to anyone else, token or not.
  EXPECT_EQ(app->Do("import " + token), "err PERMISSION_DENIED");
  EXPECT_EQ(app->Do("release " + frame), "err NOT_FOUND");
  // Shared to the compositor's uid asking read-write: the receiver's rule
  // is known only at Import, which refuses rather than narrows it.
  const std::string rw_by_uid = camera->Value("share " + frame + " uid:1002 rw");
  ASSERT_FALSE(rw_by_uid.empty());
  EXPECT_EQ(compositor->Do("import " + rw_by_uid), "err PERMISSION_DENIED");
  EXPECT_EQ(compositor->Do("import " + token), "ok " + frame + " CPU_ACCESS_READ");
  EXPECT_EQ(compositor->Do("read " + frame), "ok 77");  // same pages
  // Read-only really is read-only, here and in any process the fd goes to.
  EXPECT_EQ(compositor->Do("mmap-rw " + frame), "err EACCES");
  EXPECT_EQ(compositor->Do("mprotect-rw " + frame), "err EACCES");
  EXPECT_EQ(compositor->Do("fork-mmap-rw " + frame), "err EACCES");
  // ... also through /proc: the compositor (another uid) cannot open its
  // read-only fd again writable (the memfd's inode is 0400, hallocd's).
  EXPECT_EQ(compositor->Do("reopen-rw " + frame), "err EACCES");
  EXPECT_EQ(compositor->Do("read " + frame), "ok 77");
  EXPECT_EQ(compositor->Do("write " + frame + " 1"), "err PERMISSION_DENIED");
  // A read-only holder cannot hand out more than it has.
  EXPECT_EQ(compositor->Do("share " + frame + " name:camera rw"), "err PERMISSION_DENIED");
  EXPECT_GE(Denials("camera"), 3u);
  EXPECT_GE(Denials("app"), 1u);
  EXPECT_GE(Denials("compositor"), 1u);
}

TEST_F(PolicyTest, RevokedGrantsCannotBeImported) {
  auto camera = Start(kCamera), compositor = Start(kCompositor);
  const std::string frame = camera->Value("alloc 4096 camera_output");
  const std::string line = camera->Do("share " + frame + " name:compositor read");
  std::vector<std::string> f = absl::StrSplit(line, ' ');
  ASSERT_EQ(f.size(), 3u) << line;
  EXPECT_EQ(compositor->Do("revoke " + f[2]), "err NOT_FOUND");  // not its grant
  EXPECT_EQ(camera->Do("revoke " + f[2]), "ok");
  EXPECT_EQ(compositor->Do("import " + f[1]), "err NOT_FOUND");
}

TEST_F(PolicyTest, ReceiverKeepsTheBufferWhenTheOwnerDies) {
  auto camera = Start(kCamera), compositor = Start(kCompositor);
  const std::string frame = camera->Value("alloc 1048576 camera_output,cpu_write_often");
  ASSERT_EQ(camera->Do("write " + frame + " 9"), "ok");
  const std::string token = camera->Value("share " + frame + " name:compositor read");
  ASSERT_TRUE(absl::StartsWith(compositor->Do("import " + token), "ok"));
  camera->Quit();  // the owner's process exits
  EXPECT_EQ(compositor->Do("read " + frame), "ok 9");
  ASSERT_TRUE(WaitSessions(2));  // the admin's and the compositor's
  ASSERT_TRUE(WaitLive(1));
  absl::StatusOr<v1::DumpResponse> dump = admin_->Dump();
  ASSERT_TRUE(dump.ok());
  int compositors = 0;
  for (const auto& s : dump->sessions()) {
    EXPECT_NE(s.client(), "camera");  // its session is gone
    if (s.client() == "compositor") {
      ++compositors;
      EXPECT_EQ(s.imported_buffers(), 1u);
      EXPECT_EQ(s.imported_bytes(), 1048576u);
      EXPECT_EQ(s.owned_buffers(), 0u);
    }
  }
  EXPECT_EQ(compositors, 1);
  EXPECT_EQ(compositor->Do("release " + frame), "ok");
  EXPECT_TRUE(WaitLive(0));
  EXPECT_TRUE(admin_->Dump()->clients().empty());  // the camera's charge is gone too
}

TEST_F(PolicyTest, ReloadTakesAGoodPolicyAndKeepsTheOldOnABrokenOne) {
  auto app = Start(kApp);
  EXPECT_EQ(app->Do("alloc 4096 camera_output"), "err PERMISSION_DENIED");
  {
    std::ofstream out(policy_file_, std::ios::app);
    out << "clients { name: \"late\" match { uids: 4242 } usages: \"*\" heaps: \"*\" "
           "max_cpu_access: CPU_ACCESS_READ_WRITE }\n";
  }
  std::string text;
  {
    std::ifstream in(policy_file_);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Grant the app camera_output too.
  const std::string from = "  usages: \"cpu_read_often\"\n  usages: \"cpu_write_often\"\n  usages: \"gpu_texture\"\n  usages: \"composer_overlay\"\n  heaps: \"memfd\"";
  ASSERT_NE(text.find(from), std::string::npos);
  text.replace(text.find(from), from.size(), from + "\n  usages: \"camera_output\"");
  { std::ofstream(policy_file_) << text; }
  ASSERT_TRUE(daemon_->daemon().ReloadPolicy().ok());
  EXPECT_TRUE(absl::StartsWith(app->Do("alloc 4096 camera_output"), "ok"));
  auto late = Start(kStranger);
  EXPECT_TRUE(absl::StartsWith(late->Do("alloc 4096 0"), "ok"));

  { std::ofstream(policy_file_) << "clients { name: \"broken\" match { uids: 1 } usages: \"warp\" }\n"; }
  absl::Status bad = daemon_->daemon().ReloadPolicy();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.message(), "policy.textproto:1:")) << bad;
  EXPECT_TRUE(absl::StartsWith(app->Do("alloc 4096 camera_output"), "ok"));  // old kept
  EXPECT_EQ(admin_->Stats()->policy_reload_failures(), 1u);
}

}  // namespace
}  // namespace halloc
