// hallocd.service runs hallocd as its own user with CAP_SYS_PTRACE alone:
// the unit, the sysusers.d entry and the udev rule agree on that user, and
// hallocd started with the credentials the unit gives (setpriv(1) standing
// in for systemd: no systemd runs here) serves exe rules for clients of
// other uids, while those credentials cannot write a root-owned file through
// /proc/PID/root, which root's, even with that one capability, could.
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/uapi/halloc_heap.h"
#include "service/systemd/testing.h"

namespace halloc {
namespace {

using systemd_testing::Child;
using systemd_testing::ParseUnit;
using systemd_testing::ReadFile;
using systemd_testing::Runfile;
using systemd_testing::Values;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;
using ::testing::Not;

// The uid and gid standing in for user hallocd (which need not exist here).
constexpr uid_t kHallocdUid = 64990;
constexpr absl::Duration kWait = absl::Seconds(20);

// The fields of the lines of `file` that start with `type` (sysusers.d:
// "u hallocd - ..."), quotes kept.
std::vector<std::vector<std::string>> Lines(const std::string& file, absl::string_view type) {
  std::vector<std::vector<std::string>> out;
  for (absl::string_view line : absl::StrSplit(ReadFile(file), '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (!f.empty() && f[0] == type) out.push_back(std::move(f));
  }
  return out;
}

// The lines of the udev rule file that are rules (not comments) and hold
// `match` (e.g. SUBSYSTEM=="dma_heap").
std::vector<std::string> UdevRules(absl::string_view match) {
  std::vector<std::string> rules;
  for (absl::string_view line :
       absl::StrSplit(ReadFile(Runfile("service/systemd/75-halloc.rules")), '\n')) {
    if (!line.empty() && line[0] != '#' && absl::StrContains(line, match)) {
      rules.emplace_back(line);
    }
  }
  return rules;
}

// The capabilities `key` of `unit` names, in setpriv's terms: "-all" and
// "+sys_ptrace" for each CAP_SYS_PTRACE.
std::string SetprivCaps(const std::multimap<std::string, std::string>& unit,
                        const std::string& key) {
  std::string caps = "-all";
  for (const std::string& v : Values(unit, key)) {
    for (absl::string_view c : absl::StrSplit(v, ' ', absl::SkipEmpty())) {
      absl::StrAppend(&caps, ",+", absl::AsciiStrToLower(absl::StripPrefix(c, "CAP_")));
    }
  }
  return caps;
}

// ExecStart's flags but --policy=, which each test gives its own.
std::vector<std::string> ExecStartFlags() {
  std::vector<std::string> words =
      absl::StrSplit(Values(ParseUnit("hallocd.service"), "ExecStart").at(0), ' ');
  std::vector<std::string> flags;
  for (size_t i = 1; i < words.size(); ++i) {
    if (!absl::StartsWith(words[i], "--policy=")) flags.push_back(words[i]);
  }
  return flags;
}

// setpriv(1) giving what hallocd.service gives hallocd: its user (as
// kHallocdUid) and group, no supplementary group (the unit names none),
// AmbientCapabilities= as inheritable and ambient, CapabilityBoundingSet=,
// NoNewPrivileges=. `ambient`: false drops the ambient capabilities (what
// the unit would be without AmbientCapabilities=).
std::vector<std::string> UnitCredentials(bool ambient = true) {
  const auto unit = ParseUnit("hallocd.service");
  const std::string caps = SetprivCaps(unit, "AmbientCapabilities");
  const std::string bounding = SetprivCaps(unit, "CapabilityBoundingSet");
  std::vector<std::string> argv = {"/usr/bin/setpriv",
                                   absl::StrCat("--reuid=", kHallocdUid),
                                   absl::StrCat("--regid=", kHallocdUid),
                                   "--clear-groups",
                                   "--inh-caps=" + (ambient ? caps : "-all"),
                                   "--bounding-set=" + bounding};
  if (ambient) argv.push_back("--ambient-caps=" + caps);
  if (Values(unit, "NoNewPrivileges") == std::vector<std::string>{"yes"}) {
    argv.push_back("--no-new-privs");
  }
  return argv;
}

class UnitUserTest : public ::testing::Test {
 protected:
  // Runs `argv` to completion: its exit code (-1: did not exit), its output
  // in `out`.
  int Run(const std::vector<std::string>& argv, std::string* out = nullptr) {
    return systemd_testing::RunToExit(argv, dir_ / absl::StrCat("run", ++runs_, ".log"), kWait,
                                      out);
  }
  // Whether this test may run processes as other uids (root, outside a user
  // namespace mapping only one).
  bool CanSwitch() {
    std::vector<std::string> argv = UnitCredentials();
    argv.push_back("/bin/true");
    return Run(argv) == 0;
  }

  testing::TempDir dir_{"unit-user", 0755};
  int runs_ = 0;
};

// The unit names a user of its own, not root, and gives it CAP_SYS_PTRACE
// alone; sysusers.d creates that user, and the udev rule gives its group
// every node the module makes and the upstream heaps, to it alone.
TEST_F(UnitUserTest, UnitSysusersAndUdevRuleAgreeOnTheUser) {
  const auto unit = ParseUnit("hallocd.service");
  ASSERT_THAT(Values(unit, "User"), ElementsAre("hallocd"));
  EXPECT_THAT(Values(unit, "Group"), ElementsAre("hallocd"));
  EXPECT_THAT(Values(unit, "AmbientCapabilities"), ElementsAre("CAP_SYS_PTRACE"));
  EXPECT_THAT(Values(unit, "CapabilityBoundingSet"), ElementsAre("CAP_SYS_PTRACE"));
  EXPECT_THAT(Values(unit, "NoNewPrivileges"), ElementsAre("yes"));
  // In no group but its own: a hallocd taken over could write what any
  // group of its may (the clients' halloc, a hypervisor's kvm).
  EXPECT_THAT(Values(unit, "SupplementaryGroups"), ::testing::IsEmpty());
  ASSERT_EQ(Values(unit, "ExecStart").size(), 1u);
  EXPECT_THAT(Values(unit, "ExecStart")[0], HasSubstr("--skip_closed_nodes=false"));

  const std::string sysusers = Runfile("service/systemd/halloc.sysusers.conf");
  const auto users = Lines(sysusers, "u");
  ASSERT_EQ(users.size(), 1u);
  EXPECT_EQ(users[0][1], "hallocd");
  EXPECT_EQ(users[0][2], "-") << "a system uid of sysusers' choosing";
  const auto members = Lines(sysusers, "m");
  EXPECT_TRUE(members.empty()) << "no group membership for hallocd: " << members[0][2];

  const std::vector<std::string> misc = UdevRules("KERNEL==\"halloc|");
  ASSERT_EQ(misc.size(), 1u);
  absl::string_view kernel_names;
  for (absl::string_view field : absl::StrSplit(misc[0], ", ")) {
    if (absl::ConsumePrefix(&field, "KERNEL==\"")) kernel_names = field;
  }
  absl::ConsumeSuffix(&kernel_names, "\"");
  EXPECT_THAT(absl::StrSplit(kernel_names, '|'),
              IsSupersetOf({"halloc", HALLOC_HEAP_SYSTEM, HALLOC_HEAP_CONTIG, HALLOC_HEAP_PROTECTED,
                            HALLOC_HEAP_DEFERRED}));
  std::vector<std::string> rules = misc;
  for (const std::string& r : UdevRules("SUBSYSTEM==\"dma_heap\"")) rules.push_back(r);
  ASSERT_EQ(rules.size(), 2u);
  for (const std::string& r : rules) {
    EXPECT_THAT(r, HasSubstr("GROUP=\"hallocd\""));
    EXPECT_THAT(r, HasSubstr("MODE=\"0660\"")) << "read-write for the group alone";
    EXPECT_THAT(r, Not(HasSubstr("OWNER="))) << r;
  }
  // udmabuf keeps its group (kvm), with an ACL entry for the unit's user.
  const std::vector<std::string> udmabuf = UdevRules("KERNEL==\"udmabuf\"");
  ASSERT_EQ(udmabuf.size(), 1u);
  EXPECT_THAT(udmabuf[0], HasSubstr(absl::StrCat("RUN+=\"/bin/setfacl -n -m u:",
                                                 Values(unit, "User").at(0), ":rw $devnode\"")));
  EXPECT_THAT(udmabuf[0], Not(HasSubstr("GROUP=")));
}

// What the unit closes: root with CAP_SYS_PTRACE alone (the unit before)
// writes a root-owned file through /proc/PID/root of a root process, as a
// hallocd taken over could have written the host's through a client outside
// its mount namespace, and reads its environment, lists its fds and opens
// its memory; the unit's user can do none of it, though it still reads
// that process's /proc/PID/exe (exe rules), which needs the capability.
TEST_F(UnitUserTest, TheUnitsCredentialsReadClientsButWriteNoRootFile) {
  if (!CanSwitch()) GTEST_SKIP() << "cannot run as uid " << kHallocdUid << " here (not root)";
  const std::string canary = dir_ / "canary";
  std::ofstream(canary) << "root's\n";
  ASSERT_EQ(::chmod(canary.c_str(), 0644), 0);
  const pid_t self = ::getpid();  // root, like any client of root's
  const std::string through = absl::StrCat("/proc/", self, "/root", canary);
  char exe[PATH_MAX] = {};
  ASSERT_GT(::readlink("/proc/self/exe", exe, sizeof(exe) - 1), 0);
  const std::string read_exe = absl::StrCat("readlink /proc/", self, "/exe");
  const std::string append = absl::StrCat("echo written >> '", through, "'");
  // Its environment, its fds (a memfd reopened writable through them) and
  // its memory (opened for reading: the unit's /proc is read-only), each.
  const std::string peek_env = absl::StrCat("head -c1 /proc/", self, "/environ");
  const std::string peek_fds = absl::StrCat("ls /proc/", self, "/fd/ >/dev/null");
  const std::string peek_mem = absl::StrCat("exec 3</proc/", self, "/mem");

  std::vector<std::string> as_unit = UnitCredentials();
  std::string out;
  for (const std::string& cmd : {read_exe, append, peek_env, peek_fds, peek_mem}) {
    std::vector<std::string> argv = as_unit;
    argv.insert(argv.end(), {"/bin/sh", "-c", cmd});
    const int code = Run(argv, &out);
    if (cmd == read_exe) {
      EXPECT_EQ(code, 0) << "the unit's user cannot read a root process's exe: " << out;
      EXPECT_THAT(out, HasSubstr(exe));
    } else {
      EXPECT_NE(code, 0) << "the unit's user did " << cmd << ": " << out;
      EXPECT_THAT(out, HasSubstr("Permission denied"));
    }
  }
  // Without the ambient capability, the exe is out of reach: the read above
  // is the capability's doing.
  std::vector<std::string> argv = UnitCredentials(/*ambient=*/false);
  argv.insert(argv.end(), {"/bin/sh", "-c", read_exe});
  EXPECT_NE(Run(argv, &out), 0) << out;
  EXPECT_EQ(ReadFile(canary), "root's\n");

  // Root with that capability alone, as the unit was: it writes, and it
  // reads the environment, the fds and the memory.
  for (const std::string& cmd : {append, peek_env, peek_fds, peek_mem}) {
    argv = {"/usr/bin/setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all,+sys_ptrace",
            "--no-new-privs",
            "/bin/sh",
            "-c",
            cmd};
    EXPECT_EQ(Run(argv, &out), 0) << cmd << ": " << out;
  }
  EXPECT_EQ(ReadFile(canary), "root's\nwritten\n");
}

// hallocd itself, started as the unit starts it (its flags, its
// credentials): it runs as that user with CAP_SYS_PTRACE alone, and an exe
// rule matches a client of root's (hallocctl, copied where hallocd's user
// can reach it), whose /proc/PID/exe only the capability lets it read.
// Without the ambient capability the client is not vouched for and gets the
// catch-all rule's nothing.
TEST_F(UnitUserTest, HallocdAsTheUnitsUserServesExeRules) {
  if (!CanSwitch()) GTEST_SKIP() << "cannot run as uid " << kHallocdUid << " here (not root)";
  const std::string run = dir_ / "run";
  ASSERT_EQ(::mkdir(run.c_str(), 0700), 0);
  ASSERT_EQ(::chown(run.c_str(), kHallocdUid, kHallocdUid), 0);
  const std::string client = dir_ / "hallocctl";
  std::filesystem::copy_file(Runfile("clients/cli/hallocctl"), client);
  ASSERT_EQ(::chmod(client.c_str(), 0755), 0);
  const std::string policy = dir_ / "policy.textproto";
  std::ofstream(policy) << "clients { name: \"trusted\" match { exe: \"" << client
                        << "\" } usages: \"*\" heaps: \"*\" max_cpu_access: "
                           "CPU_ACCESS_READ_WRITE }\n"
                        << "clients { name: \"others\" match { any: true } }\n";
  ASSERT_EQ(::chmod(policy.c_str(), 0644), 0);
  const std::string control = run + "/control.sock", broker = run + "/broker.sock";
  for (bool ambient : {true, false}) {
    SCOPED_TRACE(ambient ? "the unit's credentials" : "without the ambient capability");
    // ExecStart's flags, with this test's policy and sockets.
    std::vector<std::string> argv = UnitCredentials(ambient);
    argv.push_back(Runfile("service/hallocd"));
    for (const std::string& flag : ExecStartFlags()) argv.push_back(flag);
    argv.insert(argv.end(),
                {"--policy=" + policy, "--control_socket=" + control, "--broker_socket=" + broker});
    absl::StatusOr<std::unique_ptr<Child>> hallocd =
        Child::Start(argv, {}, dir_ / absl::StrCat("hallocd.", ambient, ".log"));
    ASSERT_TRUE(hallocd.ok()) << hallocd.status();
    ASSERT_TRUE(systemd_testing::WaitForPath(broker, kWait)) << (*hallocd)->Log();
    std::string out;
    const int code = Run({client, "--control-socket=" + control, "--broker-socket=" + broker,
                          "allocate", "--size", "4096"},
                         &out);
    // setpriv exec'd hallocd in place.
    const std::string status = ReadFile(absl::StrCat("/proc/", (*hallocd)->pid(), "/status"));
    const std::string uid = absl::StrCat(kHallocdUid);
    EXPECT_THAT(status, HasSubstr(absl::StrCat("Uid:\t", uid, "\t", uid, "\t", uid, "\t", uid)));
    EXPECT_THAT(status, HasSubstr("CapBnd:\t0000000000080000"));  // CAP_SYS_PTRACE (19)
    EXPECT_THAT(status,
                HasSubstr(ambient ? "CapEff:\t0000000000080000" : "CapEff:\t0000000000000000"));
    EXPECT_THAT(status, HasSubstr("NoNewPrivs:\t1"));
    if (ambient) {
      EXPECT_EQ(code, 0) << out << "\n" << (*hallocd)->Log();
    } else {
      EXPECT_NE(code, 0) << out;
      EXPECT_THAT(out, HasSubstr("rule 'others' denies Allocate")) << out;
    }
    hallocd->reset();  // SIGKILLed and reaped
    ::unlink(control.c_str());
    ::unlink(broker.c_str());
  }
}

// hallocd as the units start it: sockets made as hallocd.socket and
// hallocd-broker.socket make them (their SocketUser=, SocketGroup=,
// SocketMode=; tools/lib/activate.py standing in for systemd), passed to
// hallocd under the unit's credentials with a watchdog. Its liveness probe
// connects to those sockets by path as any client does: it must answer, or
// systemd kills it once the grace is over, again and again (it did, with
// the sockets root's and hallocd not in their group).
TEST_F(UnitUserTest, TheWatchdogProbeReachesTheUnitsSockets) {
  if (!CanSwitch()) GTEST_SKIP() << "cannot run as uid " << kHallocdUid << " here (not root)";
  const auto service = ParseUnit("hallocd.service");
  const std::string control = dir_ / "control.sock", broker = dir_ / "broker.sock";
  absl::StatusOr<systemd_testing::NotifySocket> notify =
      systemd_testing::NotifySocket::Bind(dir_ / "notify.sock");
  ASSERT_TRUE(notify.ok()) << notify.status();
  ASSERT_EQ(::chmod((dir_ / "notify.sock").c_str(), 0666), 0);  // as systemd's is
  std::vector<std::string> argv = {"/usr/bin/python3", Runfile("tools/lib/activate.py"), control,
                                   broker, "--"};
  for (const std::string& a : UnitCredentials()) argv.push_back(a);
  argv.push_back(Runfile("service/hallocd"));
  for (const std::string& flag : ExecStartFlags()) argv.push_back(flag);
  // WatchdogSec=2s: a probe every 500 ms (each check 250 ms at most),
  // pings for 1.5 s past the last answer.
  absl::StatusOr<std::unique_ptr<Child>> hallocd =
      Child::Start(argv, {"NOTIFY_SOCKET=" + (dir_ / "notify.sock"), "WATCHDOG_USEC=2000000"},
                   dir_ / "hallocd.log");
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  ASSERT_TRUE(systemd_testing::WaitForPath(control, kWait)) << (*hallocd)->Log();
  ASSERT_TRUE(systemd_testing::WaitForPath(broker, kWait)) << (*hallocd)->Log();
  // Owned as the socket units say: SocketUser= is a user name (the
  // stand-in uid here, as for the service's User=), SocketGroup= the
  // clients' group (a stand-in gid: halloc need not exist here).
  for (const char* unit : {"hallocd.socket", "hallocd-broker.socket"}) {
    const auto socket = ParseUnit(unit);
    const std::vector<std::string> user = Values(socket, "SocketUser");
    ASSERT_EQ(user.size(), 1u) << unit;
    ASSERT_TRUE(user[0] == "root" || user[0] == Values(service, "User").at(0)) << user[0];
    const uid_t owner = user[0] == "root" ? 0 : kHallocdUid;
    unsigned mode = 0;
    ASSERT_TRUE(
        absl::numbers_internal::safe_strtou32_base(Values(socket, "SocketMode").at(0), &mode, 8));
    const std::string path = absl::StrContains(unit, "broker") ? broker : control;
    ASSERT_EQ(::chown(path.c_str(), owner, kHallocdUid + 1), 0);
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
  }
  {
    // The first connection starts hallocd.
    absl::StatusOr<UniqueFd> wake = systemd_testing::ConnectUnix(broker, SOCK_SEQPACKET);
    ASSERT_TRUE(wake.ok()) << wake.status();
    ASSERT_TRUE(notify->Until("READY=1", kWait).has_value()) << (*hallocd)->Log();
  }
  // Past the grace (a probe refused from the start is silent by then),
  // still pinging; and no probe was refused. A slow one (a loaded machine)
  // may fail, and is covered by the grace.
  absl::SleepFor(absl::Milliseconds(2500));
  while (notify->Next(absl::ZeroDuration()).has_value()) {
  }
  EXPECT_TRUE(notify->Until("WATCHDOG=1", absl::Seconds(3)).has_value()) << (*hallocd)->Log();
  EXPECT_THAT((*hallocd)->Log(), Not(HasSubstr("Permission denied")));
}

// A hallocd run by a user (no unit, no capability) holds every client's
// buffer read-write: processes of its uid (that user's every program) may
// not reach them through its /proc/PID/fd, nor its memory, though they
// may a process of theirs that did not ask the same (`sleep`, the control).
TEST_F(UnitUserTest, ProcessesOfHallocdsOwnUidCannotReachItsFds) {
  if (!CanSwitch()) GTEST_SKIP() << "cannot run as uid " << kHallocdUid << " here (not root)";
  const std::string run = dir_ / "user-run";
  ASSERT_EQ(::mkdir(run.c_str(), 0700), 0);
  ASSERT_EQ(::chown(run.c_str(), kHallocdUid, kHallocdUid), 0);
  const std::vector<std::string> as_user = {
      "/usr/bin/setpriv", absl::StrCat("--reuid=", kHallocdUid),
      absl::StrCat("--regid=", kHallocdUid), "--clear-groups"};
  std::vector<std::string> argv = as_user;
  argv.insert(argv.end(), {Runfile("service/hallocd"), "--backend=memfd",
                           "--control_socket=" + run + "/control.sock",
                           "--broker_socket=" + run + "/broker.sock"});
  absl::StatusOr<std::unique_ptr<Child>> hallocd =
      Child::Start(argv, {}, dir_ / "user-hallocd.log");
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  ASSERT_TRUE(systemd_testing::WaitForPath(run + "/broker.sock", kWait)) << (*hallocd)->Log();
  argv = as_user;
  argv.insert(argv.end(), {"/bin/sleep", "30"});
  absl::StatusOr<std::unique_ptr<Child>> sibling = Child::Start(argv, {}, dir_ / "sleep.log");
  ASSERT_TRUE(sibling.ok()) << sibling.status();
  for (const char* what : {"fd", "environ"}) {
    SCOPED_TRACE(what);
    auto reach = [&](pid_t pid) {
      std::vector<std::string> look = as_user;
      look.insert(look.end(), {std::string(absl::StrContains(what, "fd") ? "/bin/ls" : "/bin/cat"),
                               absl::StrCat("/proc/", pid, "/", what)});
      std::string out;
      return Run(look, &out) == 0;
    };
    EXPECT_TRUE(reach((*sibling)->pid())) << "the control: a process of one's own uid";
    EXPECT_FALSE(reach((*hallocd)->pid())) << (*hallocd)->Log();
  }
  // Refused while it ran (an exited hallocd has no /proc files to reach).
  EXPECT_FALSE((*hallocd)->Wait(absl::ZeroDuration()).has_value()) << (*hallocd)->Log();
  hallocd->reset();
  ::unlink((run + "/control.sock").c_str());
  ::unlink((run + "/broker.sock").c_str());
  // --dumpable leaves it open to them (core files, a debugger of its uid).
  argv = as_user;
  argv.insert(argv.end(), {Runfile("service/hallocd"), "--backend=memfd", "--dumpable",
                           "--control_socket=" + run + "/control.sock",
                           "--broker_socket=" + run + "/broker.sock"});
  hallocd = Child::Start(argv, {}, dir_ / "user-hallocd-dumpable.log");
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  ASSERT_TRUE(systemd_testing::WaitForPath(run + "/broker.sock", kWait)) << (*hallocd)->Log();
  std::vector<std::string> look = as_user;
  look.insert(look.end(), {"/bin/ls", absl::StrCat("/proc/", (*hallocd)->pid(), "/fd")});
  EXPECT_EQ(Run(look), 0) << (*hallocd)->Log();
}

// Runs `argv` as kuid kHallocdUid + 1 in a user namespace that kHallocdUid's
// processes made (its owner: kHallocdUid) and that maps kHallocdUid to its
// root, as a user's own container is (newuidmap: the user, then its
// subordinate uids): exit code, output in `out`; -1 if it did not run.
int RunInUsersContainer(const std::vector<std::string>& argv, const std::string& log,
                        std::string* out) {
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    char c = 'n';
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0 && ::setgroups(0, nullptr) == 0 &&
        ::setresgid(kHallocdUid, kHallocdUid, kHallocdUid) == 0 &&
        ::setresuid(kHallocdUid, kHallocdUid, kHallocdUid) == 0 && ::unshare(CLONE_NEWUSER) == 0) {
      c = 'y';
    }
    if (::write(ready[1], &c, 1) != 1 || c != 'y') ::_exit(120);
    if (::read(go[0], &c, 1) != 1) ::_exit(121);
    // Its uid 1: one of the user's subordinate uids, privileged in there no more.
    if (::setresuid(1, 1, 1) != 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) ::_exit(122);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(123);
  }
  ::close(ready[1]);
  ::close(go[0]);
  char c = 'n';
  const bool made = pid > 0 && ::read(ready[0], &c, 1) == 1 && c == 'y';
  ::close(ready[0]);
  if (made) {
    std::ofstream(absl::StrCat("/proc/", pid, "/uid_map"))
        << "0 " << kHallocdUid << " 1\n1 " << kHallocdUid + 1 << " 1\n";
    std::ofstream(absl::StrCat("/proc/", pid, "/gid_map")) << "0 " << kHallocdUid << " 1\n";
    (void)::write(go[1], "g", 1);
  }
  ::close(go[1]);
  int status = 0;
  if (pid <= 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  *out = ReadFile(log);
  return made && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A user's own container maps the user's uid: privileged there, its
// processes own a memfd hallocd (run by that user) made, and may make a
// read-only view of it writable again. hallocd sees that it maps its uid
// and hands such a client no read-only fd, as to its own uid; another
// user's client still gets one.
TEST_F(UnitUserTest, AUsersOwnContainerGetsNoReadOnlyMemfdOfTheUsersHallocd) {
  if (!CanSwitch()) GTEST_SKIP() << "cannot run as uid " << kHallocdUid << " here (not root)";
  const std::string run = dir_ / "user-run";
  ASSERT_EQ(::mkdir(run.c_str(), 0711), 0);  // sockets 0666: other uids' clients reach them
  ASSERT_EQ(::chown(run.c_str(), kHallocdUid, kHallocdUid), 0);
  const std::string client = dir_ / "hallocctl";
  std::filesystem::copy_file(Runfile("clients/cli/hallocctl"), client);
  ASSERT_EQ(::chmod(client.c_str(), 0755), 0);
  const std::string policy = dir_ / "policy.textproto";
  std::ofstream(policy) << "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
                           "max_cpu_access: CPU_ACCESS_READ_WRITE }\n";
  ASSERT_EQ(::chmod(policy.c_str(), 0644), 0);
  const std::string control = run + "/control.sock", broker = run + "/broker.sock";
  // The user's subordinate uids (newuidmap maps them into its containers).
  const std::string subuid = dir_ / "subuid";
  std::ofstream(subuid) << kHallocdUid << ":" << kHallocdUid + 20 << ":10\n";
  ASSERT_EQ(::chmod(subuid.c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<Child>> hallocd = Child::Start(
      {"/usr/bin/setpriv", absl::StrCat("--reuid=", kHallocdUid),
       absl::StrCat("--regid=", kHallocdUid), "--clear-groups", Runfile("service/hallocd"),
       "--backend=memfd", "--socket_mode=0666", "--policy=" + policy, "--subuid_file=" + subuid,
       "--control_socket=" + control, "--broker_socket=" + broker},
      {}, dir_ / "user-hallocd.log");
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  ASSERT_TRUE(systemd_testing::WaitForPath(broker, kWait)) << (*hallocd)->Log();
  const std::vector<std::string> allocate = {client,
                                             "--control-socket=" + control,
                                             "--broker-socket=" + broker,
                                             "allocate",
                                             "--size",
                                             "4096",
                                             "--usage",
                                             "cpu_read_often"};
  std::string out;
  const int code = RunInUsersContainer(allocate, dir_ / "contained.log", &out);
  if (code == 120) GTEST_SKIP() << "user namespaces cannot be made here";
  ASSERT_EQ(code, 0) << out << "\n" << (*hallocd)->Log();
  EXPECT_THAT(out, HasSubstr("cpu read-write")) << out;
  // A process of one of the user's subordinate uids, whatever hallocd can
  // see of its namespace (here its own: a non-dumpable one, or one below
  // the container's, shows hallocd nothing): the user's container's.
  const auto as = [&](uid_t uid) {
    std::vector<std::string> argv = {"/usr/bin/setpriv", absl::StrCat("--reuid=", uid),
                                     absl::StrCat("--regid=", uid), "--clear-groups"};
    argv.insert(argv.end(), allocate.begin(), allocate.end());
    return argv;
  };
  ASSERT_EQ(Run(as(kHallocdUid + 21), &out), 0) << out << "\n" << (*hallocd)->Log();
  EXPECT_THAT(out, HasSubstr("cpu read-write")) << out;
  // Another user's client, in hallocd's namespace: read-only holds for it.
  ASSERT_EQ(Run(as(kHallocdUid + 7), &out), 0) << out << "\n" << (*hallocd)->Log();
  EXPECT_THAT(out, HasSubstr("cpu read ")) << out;
}

}  // namespace
}  // namespace halloc
