#include "clients/cpp/halloc/base/subprocess.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

constexpr char kSh[] = "/bin/sh";

// Everything `fd` yields until EOF.
std::string ReadAll(int fd) {
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

struct Pipe {
  Pipe() {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    r.reset(p[0]);
    w.reset(p[1]);
  }
  UniqueFd r, w;
};

// The stdout of `sh -c script` run with `options` (its argv and stdout set
// here), and its wait status.
std::pair<std::string, int> RunSh(const std::string& script, SpawnOptions options = {}) {
  Pipe out;
  options.argv = {kSh, "-c", script};
  options.stdout_fd = out.w.get();
  absl::StatusOr<Subprocess> p = Subprocess::Spawn(options);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {"", -1};
  out.w.reset();
  std::string text = ReadAll(out.r.get());
  return {text, p->Wait().value_or(-1)};
}

TEST(SubprocessTest, ReportsTheExitStatus) {
  const auto [out, status] = RunSh("echo hello; exit 3");
  EXPECT_EQ(out, "hello\n");
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
}

TEST(SubprocessTest, AMissingBinaryFailsSpawnAndLeavesNoChild) {
  absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = {"/nonexistent/halloc-nothing"}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  EXPECT_NE(p.status().message().find("exec"), std::string::npos) << p.status();
  // Reaped by Spawn: no child of ours is left to wait for.
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(SubprocessTest, AFileThatIsNotExecutableIsPermissionDenied) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/not-executable");
  std::ofstream(path) << "#!/bin/sh\n";
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = {path}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kPermissionDenied) << p.status();
}

TEST(SubprocessTest, AMissingWorkingDirectoryFailsSpawn) {
  absl::StatusOr<Subprocess> p =
      Subprocess::Spawn({.argv = {kSh, "-c", "true"}, .cwd = "/nonexistent/halloc-dir"});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("chdir"), std::string::npos) << p.status();
}

TEST(SubprocessTest, BadArgumentsAreRefusedBeforeFork) {
  EXPECT_EQ(Subprocess::Spawn({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Subprocess::Spawn({.argv = {kSh}, .keep_fds = {1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // stdout_fd 2 would be stderr's, replaced first or not depending on order.
  EXPECT_EQ(Subprocess::Spawn({.argv = {kSh}, .stdout_fd = 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SubprocessTest, RunsInTheWorkingDirectoryWithTheEnvironmentGiven) {
  ::setenv("HALLOC_SUBPROCESS_DROPPED", "1", 1);
  ::setenv("HALLOC_SUBPROCESS_KEPT", "kept", 1);
  SpawnOptions o;
  o.cwd = "/";
  o.env = EnvironmentWith({"HALLOC_SUBPROCESS_SET=set"}, {"HALLOC_SUBPROCESS_DROPPED"});
  const auto [out, status] = RunSh(
      "echo \"$PWD ${HALLOC_SUBPROCESS_DROPPED-unset} $HALLOC_SUBPROCESS_KEPT "
      "$HALLOC_SUBPROCESS_SET\"",
      o);
  EXPECT_EQ(out, "/ unset kept set\n");
  EXPECT_EQ(status, 0);
}

TEST(SubprocessTest, EnvironmentWithReplacesAVariableItSets) {
  ::setenv("HALLOC_SUBPROCESS_X", "old", 1);
  int seen = 0;
  for (const std::string& kv : EnvironmentWith({"HALLOC_SUBPROCESS_X=new"})) {
    if (kv.rfind("HALLOC_SUBPROCESS_X=", 0) == 0) {
      ++seen;
      EXPECT_EQ(kv, "HALLOC_SUBPROCESS_X=new");
    }
  }
  EXPECT_EQ(seen, 1);
}

TEST(SubprocessTest, KeepsOnlyTheFdsItIsGiven) {
  Pipe kept, other;  // both close-on-exec in this process
  SpawnOptions o;
  o.keep_fds = {kept.w.get()};
  const auto [out, status] =
      RunSh(absl::StrCat("echo kept >&", kept.w.get(), "; if { echo other >&",
                         other.w.get(), "; } 2>/dev/null; then echo open; else echo closed; fi"),
            o);
  EXPECT_EQ(out, "closed\n");  // the fd it was not given is closed in the child
  kept.w.reset();
  other.w.reset();
  EXPECT_EQ(ReadAll(kept.r.get()), "kept\n");
  EXPECT_EQ(ReadAll(other.r.get()), "");
  EXPECT_EQ(status, 0);
}

TEST(SubprocessTest, StdinAndStderrGoWhereTheyAreSent) {
  Pipe in, err;
  SpawnOptions o;
  o.stdin_fd = in.r.get();
  o.stderr_fd = err.w.get();
  ASSERT_EQ(::write(in.w.get(), "abc\n", 4), 4);
  in.w.reset();
  const auto [out, status] = RunSh("read x; echo \"$x\" >&2; echo done", o);
  err.w.reset();
  EXPECT_EQ(out, "done\n");
  EXPECT_EQ(ReadAll(err.r.get()), "abc\n");
  EXPECT_EQ(status, 0);
}

TEST(SubprocessTest, SetsTheFileLimit) {
  SpawnOptions o;
  o.nofile = 77;
  EXPECT_EQ(RunSh("ulimit -n", o).first, "77\n");
}

TEST(SubprocessTest, TheChildStartsWithDefaultSignals) {
  // Ignored here (as tests and servers do for SIGPIPE), blocked in the
  // spawning thread (as a thread waiting in sigwait would).
  struct sigaction ign = {}, old_pipe = {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGPIPE, &ign, &old_pipe), 0);
  sigset_t usr2, old_mask;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr2, &old_mask), 0);
  Pipe out;
  absl::StatusOr<Subprocess> p = Subprocess::Spawn(
      {.argv = {"/bin/grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"},
       .stdout_fd = out.w.get()});
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  out.w.reset();
  EXPECT_EQ(ReadAll(out.r.get()), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
  EXPECT_EQ(p->Wait(), 0);
}

TEST(SubprocessTest, WaitTimesOutWhileTheChildRuns) {
  absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = {kSh, "-c", "exec sleep 30"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->Wait(absl::Milliseconds(50)), std::nullopt);
  EXPECT_TRUE(p->running());
  EXPECT_TRUE(p->Signal(SIGUSR1));
  std::optional<int> status = p->Wait(absl::Seconds(30));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGUSR1);
  EXPECT_FALSE(p->running());
  EXPECT_EQ(p->Wait(), -1);  // reaped already
  EXPECT_FALSE(p->Signal(SIGUSR1));
}

TEST(SubprocessTest, StopEscalatesToSigkillAfterTheGrace) {
  // A sleep that ignores SIGTERM (the shell's ignored disposition survives
  // exec); "ready" once it is ignored.
  Pipe out;
  absl::StatusOr<Subprocess> p = Subprocess::Spawn(
      {.argv = {kSh, "-c", "trap '' TERM; echo ready; exec sleep 30"}, .stdout_fd = out.w.get()});
  ASSERT_TRUE(p.ok()) << p.status();
  out.w.reset();
  char ready[6] = {};
  ASSERT_EQ(::read(out.r.get(), ready, sizeof(ready)), 6);
  const int status = p->Stop(absl::Milliseconds(100));
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;

  absl::StatusOr<Subprocess> q = Subprocess::Spawn({.argv = {kSh, "-c", "exec sleep 30"}});
  ASSERT_TRUE(q.ok()) << q.status();
  const int term = q->Stop(absl::Seconds(30));
  EXPECT_TRUE(WIFSIGNALED(term) && WTERMSIG(term) == SIGTERM) << term;
}

TEST(SubprocessTest, DestroyingItKillsAndReapsTheChild) {
  pid_t pid;
  {
    absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = {kSh, "-c", "exec sleep 30"}});
    ASSERT_TRUE(p.ok()) << p.status();
    pid = p->pid();
    Subprocess moved = *std::move(p);
    EXPECT_FALSE(p->running());
    EXPECT_EQ(moved.pid(), pid);
  }
  // Reaped: not a zombie of ours any more.
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(SubprocessTest, TheChildDiesWithTheThreadThatSpawnedIt) {
  std::optional<Subprocess> child;
  std::thread([&] {
    absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = {kSh, "-c", "exec sleep 30"}});
    ASSERT_TRUE(p.ok()) << p.status();
    child.emplace(*std::move(p));
  }).join();
  ASSERT_TRUE(child.has_value());
  std::optional<int> status = child->Wait(absl::Seconds(30));
  ASSERT_TRUE(status.has_value()) << "the child outlived the thread that spawned it";
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL) << *status;
}

TEST(SubprocessTest, WithoutDieWithParentTheChildOutlivesItsThread) {
  std::optional<Subprocess> child;
  std::thread([&] {
    absl::StatusOr<Subprocess> p =
        Subprocess::Spawn({.argv = {kSh, "-c", "exec sleep 30"}, .die_with_parent = false});
    ASSERT_TRUE(p.ok()) << p.status();
    child.emplace(*std::move(p));
  }).join();
  ASSERT_TRUE(child.has_value());
  EXPECT_EQ(child->Wait(absl::Milliseconds(200)), std::nullopt);
}

}  // namespace
}  // namespace halloc
