// The fixture of the attacks on a real hallocd (abuse_test.cc,
// exe_rules_test.cc): a hallocd in a temp directory other uids can reach,
// a peer process to drive it, and helpers to run programs.
#ifndef HALLOC_TESTS_INTEGRATION_ABUSE_FIXTURE_H_
#define HALLOC_TESTS_INTEGRATION_ABUSE_FIXTURE_H_

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "tests/integration/hallocd_process.h"

namespace halloc {

using testing::HallocdProcess;
using testing::Runfile;
using testing::TestChild;
using testing::WriteAll;

inline std::string RealPath(const std::string& path) {
  return std::filesystem::canonical(path).string();
}

// Runs `argv` with `stdin_text` as its input and returns its output.
// `in_child` runs between fork and exec: async-signal-safe calls only (this
// process has threads), no allocation.
inline std::string RunWithInput(const std::vector<std::string>& argv,
                                const std::string& input,
                                const std::function<void()>& in_child = nullptr) {
  std::vector<char*> args;  // before the fork: the child must not allocate
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (in_child) in_child();
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  if (write(in[1], input.data(), input.size()) < 0) {}
  close(in[1]);
  std::string output;
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) output.append(buf, n);
  close(out[0]);
  waitpid(pid, nullptr, 0);
  return output;
}

class AbuseTest : public ::testing::Test {
 protected:
  void SetUp() override {}
  void TearDown() override { daemon_.reset(); }
  // Starts hallocd with `policy` (text), at most `nofile` fds when given.
  void StartDaemon(const std::string& policy, rlim_t nofile = 0,
                   std::vector<std::string> flags = {}) {
    absl::StatusOr<std::unique_ptr<HallocdProcess>> d =
        HallocdProcess::Start(dir_.path(), {policy, nofile, std::move(flags)});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    pid_ = daemon_->pid();
    opts_ = daemon_->connect_options();
  }
  std::string Log() const { return daemon_->Log(); }
  // hallocd's Stats; a failed call fails the test (a daemon the attack
  // killed must not read as "no live buffers").
  v1::StatsResponse Stats() {
    auto stub = v1::Allocator::NewStub(grpc::CreateChannel(
        "unix:" + opts_.control_socket, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::StatsResponse resp;
    const grpc::Status s = stub->Stats(&ctx, v1::StatsRequest(), &resp);
    EXPECT_TRUE(s.ok()) << "Stats: " << s.error_message();
    return resp;
  }
  // A peer running `exe` (the peer binary or a copy of it) as uid 0.
  std::string Peer(const std::string& exe, const std::string& commands,
                   const std::function<void()>& in_child = nullptr) {
    return RunWithInput({exe, opts_.control_socket, opts_.broker_socket, "shell", "0"},
                        commands + "quit\n", in_child);
  }
  // A rule granting everything to processes that run `exe`, and nothing to
  // anyone else.
  static std::string TrustedOnly(const std::string& exe) {
    return absl::StrCat("clients { name: \"trusted\" match { exe: \"", exe,
                        "\" } usages: \"*\" heaps: \"*\" max_cpu_access: "
                        "CPU_ACCESS_READ_WRITE }\n"
                        "clients { name: \"others\" match { any: true } }\n");
  }

  testing::TempDir dir_{"abuse", 0755};
  ConnectOptions opts_;
  std::unique_ptr<HallocdProcess> daemon_;
  pid_t pid_ = -1;
};


}  // namespace halloc

#endif  // HALLOC_TESTS_INTEGRATION_ABUSE_FIXTURE_H_
