#include "clients/cpp/halloc/base/test_child.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace halloc::testing {
namespace {

// Set by the parent before it spawns; a forked copy would see it, a
// child started by exec sees its initial value.
int g_set_by_parent = 0;

int Echo(absl::Span<const std::string> args, int report) {
  WriteAll(report,
           absl::StrCat(getpid(), " ", g_set_by_parent, " ", absl::StrJoin(args, ","), "\n"));
  return 7;
}
HALLOC_TEST_CHILD("echo", Echo);

// Reads the kept fd (args[0]) and reports what it read.
int ReadKept(absl::Span<const std::string> args, int report) {
  int fd = -1;
  if (args.size() != 1 || !absl::SimpleAtoi(args[0], &fd)) return 2;
  char buf[64];
  const ssize_t n = read(fd, buf, sizeof(buf));
  WriteAll(report, std::string(buf, n > 0 ? static_cast<size_t>(n) : 0) + "\n");
  return 0;
}
HALLOC_TEST_CHILD("read-kept", ReadKept);

int Hangs(absl::Span<const std::string>, int report) {
  WriteAll(report, "hanging\n");
  for (;;) pause();
}
HALLOC_TEST_CHILD("hangs", Hangs);

// Allocates a lot: what a bare fork's child could hang in.
int Allocates(absl::Span<const std::string>, int report) {
  std::vector<std::string> v;
  for (int i = 0; i < 10000; ++i) v.push_back(std::string(100 + i % 1000, 'x'));
  WriteAll(report, absl::StrCat(v.size(), "\n"));
  return 0;
}
HALLOC_TEST_CHILD("allocates", Allocates);

TEST(TestChildTest, RunsTheNamedMainInAFreshProcessWithItsArgs) {
  g_set_by_parent = 42;
  absl::StatusOr<TestChild> child = TestChild::Spawn("echo", {"a b", "", "c"});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_NE(child->pid(), getpid());
  EXPECT_EQ(child->Line(), absl::StrCat(child->pid(), " 0 a b,,c"));
  const std::optional<int> status = child->Wait();
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 7) << *status;
  // It closed its end: no more lines.
  EXPECT_EQ(child->Line(absl::Seconds(1)), std::nullopt);
}

TEST(TestChildTest, KeepsTheFdsItIsGiven) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  ASSERT_EQ(write(p[1], "through", 7), 7);
  close(p[1]);
  absl::StatusOr<TestChild> child = TestChild::Spawn("read-kept", {absl::StrCat(p[0])}, {p[0]});
  close(p[0]);
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(child->Line(), "through");
}

TEST(TestChildTest, KillEndsAHangingChild) {
  absl::StatusOr<TestChild> child = TestChild::Spawn("hangs");
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_EQ(child->Line(), "hanging");
  const pid_t pid = child->pid();
  child->Kill();
  EXPECT_EQ(kill(pid, 0), -1);  // reaped: no such process
  EXPECT_EQ(child->Line(absl::Seconds(1)), std::nullopt);
}

TEST(TestChildTest, AnUnknownNameIsRefused) {
  absl::StatusOr<TestChild> child = TestChild::Spawn("no-such-child");
  EXPECT_EQ(child.status().code(), absl::StatusCode::kInvalidArgument) << child.status();
}

TEST(TestChildTest, ChildrenOfABusyThreadedParentAllocate) {
  // Another thread allocating all the time, as gRPC's do in the tests.
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop) std::vector<std::string> v(64, std::string(200, 'y'));
  });
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<TestChild> child = TestChild::Spawn("allocates");
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) break;  // the thread must be joined either way
    EXPECT_EQ(child->Line(), "10000") << "child " << i;
  }
  stop = true;
  busy.join();
}

}  // namespace
}  // namespace halloc::testing
