// The unit files: systemd's own linters find nothing, the sandbox stays
// tight, and what the units promise matches what hallocd does (socket names
// and types, reload signal, fd limit, the group).
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "clients/cpp/halloc/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/systemd/activation.h"
#include "service/systemd/testing.h"

namespace halloc {
namespace {

using systemd_testing::Child;
using systemd_testing::ParseUnit;
using systemd_testing::ReadFile;
using systemd_testing::Runfile;
using systemd_testing::SystemdTool;
using systemd_testing::Values;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kTimeout = absl::Seconds(60);  // a tool's run
constexpr absl::Duration kWait = absl::Seconds(20);     // hallocd's answers
const char* const kUnits[] = {"hallocd.socket", "hallocd-broker.socket", "hallocd.service"};

class UnitsTest : public ::testing::Test {
 protected:
  // Runs `argv` to completion; its exit code, its output in `out`.
  int Run(const std::vector<std::string>& argv, std::string* out) {
    return systemd_testing::RunToExit(argv, dir_ / absl::StrCat("run", ++runs_, ".log"), kTimeout,
                                      out);
  }

  // Copies of the units whose ExecStart runs the hallocd built here (the
  // linter checks that the binary exists; the package will put it in
  // /usr/bin).
  std::vector<std::string> InstalledCopies() {
    std::vector<std::string> paths;
    for (const char* unit : kUnits) {
      const std::string text = absl::StrReplaceAll(
          ReadFile(Runfile(absl::StrCat("service/systemd/", unit))),
          {{"ExecStart=/usr/bin/hallocd", "ExecStart=" + Runfile("service/hallocd")}});
      paths.push_back(dir_ / unit);
      std::ofstream(paths.back()) << text;
    }
    return paths;
  }

  void SetUp() override {
    analyze_ = SystemdTool("systemd-analyze");
    if (analyze_.empty()) GTEST_SKIP() << "systemd-analyze not installed (package systemd)";
    ASSERT_FALSE(dir_.path().empty());
  }

  std::string analyze_;
  testing::TempDir dir_{"sd"};
  int runs_ = 0;
};

// `systemd-analyze verify` reports nothing at all, warnings included.
TEST_F(UnitsTest, VerifyFindsNothing) {
  std::vector<std::string> argv = {analyze_, "verify"};
  for (const std::string& p : InstalledCopies()) argv.push_back(p);
  std::string out;
  EXPECT_EQ(Run(argv, &out), 0) << out;
  EXPECT_EQ(out, "") << "systemd-analyze verify complained";
}

// The sandbox's exposure score (`systemd-analyze security`, 0 best, 10
// worst) stays at 2.0 or below: loosening it must be a deliberate change.
TEST_F(UnitsTest, SandboxExposureAtMostTwo) {
  std::string out;
  EXPECT_EQ(Run({analyze_, "security", "--offline=yes", "--threshold=20",
                 InstalledCopies().back()},
                &out),
            0)
      << out;
}

// The sockets carry the names and types hallocd takes (activation.h), owned
// by hallocd's user and group halloc with mode 0660; the service is what
// main.cc implements.
TEST_F(UnitsTest, UnitsAgreeWithHallocd) {
  const auto control = ParseUnit("hallocd.socket");
  EXPECT_THAT(Values(control, "ListenStream"), ElementsAre("/run/halloc/control.sock"));
  EXPECT_THAT(Values(control, "FileDescriptorName"), ElementsAre(kControlFdName));
  const auto broker = ParseUnit("hallocd-broker.socket");
  EXPECT_THAT(Values(broker, "ListenSequentialPacket"), ElementsAre("/run/halloc/broker.sock"));
  EXPECT_THAT(Values(broker, "FileDescriptorName"), ElementsAre(kBrokerFdName));
  for (const auto* socket : {&control, &broker}) {
    EXPECT_THAT(Values(*socket, "SocketGroup"), ElementsAre("halloc"));
    // hallocd's watchdog probe connects to them (unit_user_test).
    EXPECT_EQ(Values(*socket, "SocketUser"), Values(ParseUnit("hallocd.service"), "User"));
    EXPECT_THAT(Values(*socket, "SocketMode"), ElementsAre("0660"));
    EXPECT_THAT(Values(*socket, "Service"), ElementsAre("hallocd.service"));
  }

  const auto service = ParseUnit("hallocd.service");
  EXPECT_THAT(Values(service, "Type"), ElementsAre("notify"));
  EXPECT_THAT(Values(service, "Sockets"), ElementsAre("hallocd.socket hallocd-broker.socket"));
  EXPECT_THAT(Values(service, "ExecStart"),
              ElementsAre("/usr/bin/hallocd --policy=/etc/halloc/policy.textproto "
                          "--skip_closed_nodes=false"));
  EXPECT_THAT(Values(service, "ExecReload"), ElementsAre("/bin/kill -HUP $MAINPID"));
  EXPECT_FALSE(Values(service, "WatchdogSec").empty());
  // main.cc's kExitConfig: a start refused what it needs (the in-guest
  // UnitUserGuestTest sees hallocd exit with it).
  EXPECT_THAT(Values(service, "RestartPreventExitStatus"), ElementsAre("78"));
  // 100k live buffers, each an fd, plus the connections (half of the limit
  // at most by default: service/connection_limits.h).
  uint64_t nofile = 0;
  ASSERT_EQ(Values(service, "LimitNOFILE").size(), 1u);
  ASSERT_TRUE(absl::SimpleAtoi(Values(service, "LimitNOFILE")[0], &nofile));
  EXPECT_GE(nofile / 2, 100000u);
  // The devices hallocd's backends open.
  EXPECT_THAT(Values(service, "DevicePolicy"), ElementsAre("closed"));
  EXPECT_THAT(Values(service, "DeviceAllow"),
              ::testing::IsSupersetOf({"/dev/halloc rw", "/dev/dma_heap/halloc-system rw",
                                       "/dev/dma_heap/halloc-contig rw",
                                       "/dev/dma_heap/halloc-protected rw",
                                       "/dev/dma_heap/halloc-deferred rw", "char-dma_heap rw",
                                       "/dev/udmabuf rw"}));
}

// The flags ExecStart passes exist (an unknown flag would stop hallocd at
// every start).
TEST_F(UnitsTest, ExecStartFlagsExist) {
  std::string out;
  ASSERT_EQ(Run({Runfile("service/hallocd"), "--helpfull"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("--policy (policy file"));
  EXPECT_THAT(out, HasSubstr("--skip_closed_nodes ("));
}

// The sysusers.d snippet creates the sockets' group.
TEST_F(UnitsTest, SysusersCreatesTheGroup) {
  const std::string sysusers = SystemdTool("systemd-sysusers");
  if (sysusers.empty()) GTEST_SKIP() << "systemd-sysusers not installed";
  std::filesystem::create_directories(dir_ / "root/etc");
  std::string out;
  EXPECT_EQ(Run({sysusers, "--dry-run", "--root=" + (dir_ / "root"),
                 Runfile("service/systemd/halloc.sysusers.conf")},
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("Creating group 'halloc'"));
  EXPECT_THAT(out, HasSubstr("Creating user 'hallocd'"));
}

// hallocd under strace, started as the service starts it (socket-activated:
// systemd-socket-activate stands in for systemd) and driven through what it
// does at work (sd_notify and the watchdog's probes, broker and gRPC
// Allocate, health, reload, stop), makes only system calls that
// SystemCallFilter=@system-service allows and opens only AF_UNIX sockets
// (RestrictAddressFamilies=): under systemd anything else fails.
TEST_F(UnitsTest, HallocdStaysInsideTheSyscallFilter) {
  const std::string strace = SystemdTool("strace");  // /usr/bin
  if (strace.empty()) GTEST_SKIP() << "strace not installed (package strace)";
  const std::string activate = SystemdTool("systemd-socket-activate");
  if (activate.empty()) GTEST_SKIP() << "systemd-socket-activate not installed";
  if (systemd_testing::Sanitized()) {
    GTEST_SKIP() << "a sanitizer's runtime makes its own system calls (LeakSanitizer even "
                    "ptraces, which strace prevents): only the plain build is hallocd as shipped";
  }
  // The system calls a filter entry names, nested groups expanded.
  auto expand = [&](const std::string& entry) {
    std::set<std::string> calls;
    if (entry[0] != '@') {
      calls.insert(entry);
      return calls;
    }
    std::string out;
    std::vector<std::string> pending = {entry};
    std::set<std::string> groups;
    while (!pending.empty()) {
      const std::string g = pending.back();
      pending.pop_back();
      if (!groups.insert(g).second) continue;
      EXPECT_EQ(Run({analyze_, "syscall-filter", g}, &out), 0) << out;
      bool first = true;
      for (absl::string_view line : absl::StrSplit(out, '\n')) {
        line = absl::StripAsciiWhitespace(line);
        if (first || line.empty() || line[0] == '#') {
          first = false;
          continue;
        }
        if (line[0] == '@') {
          pending.emplace_back(line);
        } else {
          calls.emplace(line);
        }
      }
    }
    return calls;
  };
  std::set<std::string> allowed = expand("@system-service");
  ASSERT_GT(allowed.size(), 100u);
  // Less what the unit denies (SystemCallFilter=~...): each call named
  // alone must be in the set (else the entry is a mistake); a group's may
  // not all be.
  for (const std::string& filter : Values(ParseUnit("hallocd.service"), "SystemCallFilter")) {
    if (!absl::StartsWith(filter, "~")) continue;
    for (absl::string_view denied : absl::StrSplit(filter.substr(1), ' ', absl::SkipEmpty())) {
      const std::string entry(denied);
      if (entry[0] != '@') {
        ASSERT_EQ(allowed.erase(entry), 1u) << entry << " is not in the set";
        continue;
      }
      const std::set<std::string> calls = expand(entry);
      ASSERT_FALSE(calls.empty()) << entry;
      for (const std::string& call : calls) allowed.erase(call);
    }
  }

  const std::string trace = dir_ / "strace.out";
  const std::string control = dir_ / "control.sock";
  const std::string broker = dir_ / "broker.sock";
  absl::StatusOr<systemd_testing::NotifySocket> notify =
      systemd_testing::NotifySocket::Bind(dir_ / "notify.sock");
  ASSERT_TRUE(notify.ok()) << notify.status();
  const std::string hallocd_bin = Runfile("service/hallocd");
  // Both sockets from launchers (chained: one socket type each, see
  // activation_test).
  absl::StatusOr<std::unique_ptr<Child>> hallocd = Child::Start(
      {strace, "-f", "-qq", "-o", trace, activate, "--seqpacket", "--listen=" + broker, "--",
       activate, "--listen=" + control, "--fdname=broker:control",
       "--setenv=NOTIFY_SOCKET=" + (dir_ / "notify.sock"), "--setenv=WATCHDOG_USEC=100000", "--",
       hallocd_bin},
      {}, dir_ / "hallocd.log");
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  ASSERT_TRUE(systemd_testing::WaitForPath(broker, kWait)) << (*hallocd)->Log();
  {
    // A bare connection starts hallocd (see activation_test for why bare).
    absl::StatusOr<UniqueFd> wake = systemd_testing::ConnectUnix(broker, SOCK_SEQPACKET);
    ASSERT_TRUE(wake.ok()) << wake.status();
    ASSERT_TRUE(notify->Until("READY=1", kWait).has_value()) << (*hallocd)->Log();
  }
  ASSERT_TRUE(notify->Until("WATCHDOG=1", kWait).has_value()) << (*hallocd)->Log();
  ASSERT_TRUE(systemd_testing::CheckHealth(control, "", kWait).ok());
  ConnectOptions opts;
  opts.control_socket = control;
  opts.broker_socket = broker;
  for (bool fast_path : {true, false}) {
    opts.broker_fast_path = fast_path;
    absl::StatusOr<Client> c = Client::Connect(opts);
    ASSERT_TRUE(c.ok()) << c.status();
    // On the fast path, a few in a row: a lone client, whose CPU the
    // broker thread follows (sched_setaffinity).
    for (int i = 0; i < (fast_path ? 3 : 1); ++i) {
      absl::StatusOr<Buffer> buf = c->Allocate(BlobDescriptor(1 << 20));
      ASSERT_TRUE(buf.ok()) << buf.status();
    }
  }
  // Signals go to hallocd itself, strace's only child (the launcher exec'd
  // it in place).
  pid_t pid = 0;
  std::istringstream(ReadFile(
      absl::StrCat("/proc/", (*hallocd)->pid(), "/task/", (*hallocd)->pid(), "/children"))) >>
      pid;
  ASSERT_GT(pid, 0);
  ::kill(pid, SIGHUP);
  ASSERT_TRUE(notify->Until("RELOADING=1", kWait).has_value());
  ::kill(pid, SIGTERM);
  std::optional<int> status = (*hallocd)->Wait(kWait);  // strace exits with it
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << (*hallocd)->Log();

  const std::regex call(R"(^\d+\s+([a-z0-9_]+)\()");
  const std::regex family(R"(socket\((AF_[A-Z0-9]+))");
  std::set<std::string> outside, families;
  std::string non_unix;  // the calls that opened other sockets, for the failure
  int calls = 0;
  std::istringstream in(ReadFile(trace));
  std::string line;
  std::smatch m;
  // What the launcher did before it exec'd hallocd is systemd's part.
  while (std::getline(in, line) &&
         !(absl::StrContains(line, absl::StrCat("execve(\"", hallocd_bin, "\"")) &&
           absl::StrContains(line, "= 0"))) {
  }
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, call)) {
      ++calls;
      if (!allowed.count(m[1])) outside.insert(m[1]);
    }
    if (std::regex_search(line, m, family)) {
      families.insert(m[1]);
      if (m[1] != "AF_UNIX") absl::StrAppend(&non_unix, line, "\n");
    }
  }
  EXPECT_GT(calls, 1000);
  EXPECT_TRUE(outside.empty()) << "outside the unit's SystemCallFilter: "
                               << absl::StrJoin(outside, " ");
  EXPECT_THAT(families, ElementsAre("AF_UNIX")) << non_unix;
}

}  // namespace
}  // namespace halloc
