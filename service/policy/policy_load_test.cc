// Policy::Load: what hallocd takes its policy from (a file only root or its
// own user could have written, reached through nothing another user could
// swap) and what no reader may be handed (a FIFO, a device, a huge file).
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/policy/policy.h"

namespace halloc {
namespace {

constexpr char kRule[] =
    "clients { name: \"a\" match { any: true } usages: \"*\" heaps: \"*\" }\n";

class PolicyLoadTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text, mode_t mode) {
    const std::string p = dir_ / name;
    std::ofstream(p) << text;
    EXPECT_EQ(::chmod(p.c_str(), mode), 0);
    return p;
  }

  testing::TempDir dir_{"policy-load"};
};

TEST_F(PolicyLoadTest, HallocdsPolicyIsRootsOrItsOwnAndWritableByNoOneElse) {
  EXPECT_TRUE(Policy::Load(Write("ok.textproto", kRule, 0644)).ok());
  // Group-writable: refused unless the group is root's (below).
  for (mode_t mode : {0664, 0646, 0666}) {
    SCOPED_TRACE(mode);
    const std::string p = Write("open.textproto", kRule, mode);
    if (::chown(p.c_str(), -1, 65534) != 0 && (mode & S_IWOTH) == 0) continue;  // no other gid
    absl::Status s = Policy::Load(p).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "writable by")) << s;
    // A draft anyone wrote is only read (hallocctl policy check).
    EXPECT_TRUE(Policy::Load(p, Policy::Writer::kAnyone).ok());
  }
  const std::string theirs = Write("theirs.textproto", kRule, 0644);
  if (::chown(theirs.c_str(), 65534, 65534) != 0) {
    GTEST_SKIP() << "cannot give a file to uid 65534 here: " << std::strerror(errno);
  }
  absl::Status s = Policy::Load(theirs).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "belongs to uid 65534")) << s;
  // Nor through a directory another user could change.
  const std::string sub = dir_ / "theirs-dir";
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);
  std::ofstream(sub + "/p.textproto") << kRule;
  ASSERT_EQ(::chown(sub.c_str(), 65534, 65534), 0);
  s = Policy::Load(sub + "/p.textproto").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST_F(PolicyLoadTest, APolicyWritableByRootsGroupIsRead) {
  const std::string group_root = Write("group-root.textproto", kRule, 0664);
  if (::chown(group_root.c_str(), -1, 0) != 0) {
    GTEST_SKIP() << "cannot give a file to gid 0 here: " << std::strerror(errno);
  }
  EXPECT_TRUE(Policy::Load(group_root).ok()) << Policy::Load(group_root).status();
}

// A FIFO (whose open and read would wait for a writer: hallocd's reload,
// on its main thread, ignored SIGTERM meanwhile), a device without end, a
// directory, a file past the bound: refused at once.
TEST_F(PolicyLoadTest, OnlyABoundedRegularFileIsRead) {
  const std::string fifo = dir_ / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string zero = dir_ / "zero";
  ASSERT_EQ(::symlink("/dev/zero", zero.c_str()), 0);
  for (Policy::Writer w : {Policy::Writer::kTrusted, Policy::Writer::kAnyone}) {
    for (const std::string& p : {fifo, zero, dir_.path()}) {
      SCOPED_TRACE(p);
      EXPECT_EQ(Policy::Load(p, w).status().code(), absl::StatusCode::kFailedPrecondition)
          << Policy::Load(p, w).status();
    }
  }
  const std::string big =
      Write("big.textproto", std::string(Policy::kMaxFileBytes + 1, '#'), 0644);
  EXPECT_EQ(Policy::Load(big).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Policy::Load(dir_ / "none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Policy::Load(dir_ / "none", Policy::Writer::kAnyone).status().code(),
            absl::StatusCode::kNotFound);
}

// A draft's path is anyone's to point anywhere: at a device whose opening
// acts (a watchdog's arms it). It was opened before it was found not to
// be a regular file; now it is only looked at.
TEST_F(PolicyLoadTest, WhatIsNotARegularFileIsNotOpened) {
  const std::string fifo = dir_ / "device";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string draft = dir_ / "draft";
  ASSERT_EQ(::symlink(fifo.c_str(), draft.c_str()), 0);
  UniqueFd watch(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  ASSERT_TRUE(watch);
  ASSERT_GE(::inotify_add_watch(watch.get(), fifo.c_str(), IN_OPEN), 0);
  for (Policy::Writer w : {Policy::Writer::kAnyone, Policy::Writer::kTrusted}) {
    EXPECT_EQ(Policy::Load(draft, w).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  char events[4096];
  EXPECT_LT(::read(watch.get(), events, sizeof(events)), 0) << "the FIFO was opened";
  // A regular file is opened, and read, as before.
  const std::string ok = Write("ok.textproto", kRule, 0644);
  ASSERT_GE(::inotify_add_watch(watch.get(), ok.c_str(), IN_OPEN), 0);
  EXPECT_TRUE(Policy::Load(ok).ok());
  EXPECT_GT(::read(watch.get(), events, sizeof(events)), 0) << "no IN_OPEN seen at all";
}

}  // namespace
}  // namespace halloc
