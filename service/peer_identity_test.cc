#include "service/peer_identity.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/peer_identity_testing.h"
#include "service/util/subordinate_uids.h"

namespace halloc {
namespace {

// The pid a pidfd refers to (its fdinfo's "Pid:" line), or -1.
pid_t PidOf(int pidfd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(pidfd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pid:", 0) == 0) return std::stoi(line.substr(4));
  }
  return -1;
}

TEST(PeerIdentityTest, PinsThePeerOfAConnection) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  // Both ends are ours: the peer is this process, whichever way it is found.
  UniqueFd pidfd = PeerPidfd(a.get(), ::getpid());
  ASSERT_TRUE(pidfd) << "no pidfd (pidfd_open needs Linux 5.3)";
  EXPECT_EQ(PidOf(pidfd.get()), ::getpid());
  // The option failing for another reason than being unknown (here: no
  // socket) is not made up for by pid, which may be another process's by
  // then (the kernels before 6.5, where it is, run in the guest tests).
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_FALSE(PeerPidfd(-1, child->pid()));
}

// As a listener admits a peer: pinned and charged; out of fds to pin it,
// RESOURCE_EXHAUSTED (refused and paused as accept4's EMFILE), not a peer
// charged by pid alone or as gone.
TEST(PeerIdentityTest, PinsAndChargesAPeerOrSaysItIsOutOfFds) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  ucred cred{};
  socklen_t len = sizeof(cred);
  ASSERT_EQ(::getsockopt(a.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
  absl::StatusOr<ChargedPeer> peer = PinAndCharge(a.get(), cred, SubordinateUids());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(PidOf(peer->pidfd.get()), ::getpid());
  EXPECT_EQ(peer->charged, ::getuid());
  peer->pidfd.reset();

  peer = WithNoFdFree([&] { return PinAndCharge(a.get(), cred, SubordinateUids()); });
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kResourceExhausted)
      << (peer.ok() ? absl::StrCat("charged to uid ", peer->charged) : peer.status().ToString());
}

TEST(PeerIdentityTest, VouchesForTheFileOfALiveProcess) {
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  ASSERT_TRUE(pidfd);
  // Spawn returns once the child has exec'ed sleep.
  const std::string sleep_bin = std::filesystem::canonical("/bin/sleep");
  ExeSample s = SampleExe(pidfd.get(), child->pid());
  EXPECT_EQ(s.path, sleep_bin);
  ASSERT_TRUE(s.file.has_value());
  EXPECT_EQ(*s.file, *FileIdOf(sleep_bin));
  // No pidfd to show it alive: the path, not the file.
  ExeSample unpinned = SampleExe(-1, child->pid());
  EXPECT_EQ(unpinned.path, sleep_bin);
  EXPECT_FALSE(unpinned.file.has_value());
}

// A pid reused by another process: the pidfd (pinned to the first one)
// shows it exited, so the other's binary is not vouched for.
TEST(PeerIdentityTest, DoesNotVouchOnceThePinnedProcessExited) {
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  ASSERT_TRUE(pidfd);
  ASSERT_TRUE(child->Signal(SIGKILL));
  ASSERT_TRUE(child->Wait().has_value());
  // This process stands in for the one that took the pid over.
  ExeSample s = SampleExe(pidfd.get(), ::getpid());
  EXPECT_FALSE(s.path.empty());
  EXPECT_FALSE(s.file.has_value());
}

TEST(PeerIdentityTest, StillRunningUntilThePinnedProcessExits) {
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  ASSERT_TRUE(pidfd);
  EXPECT_TRUE(StillRunning(pidfd.get()));
  ASSERT_TRUE(child->Signal(SIGKILL));
  ASSERT_TRUE(child->Wait().has_value());
  EXPECT_FALSE(StillRunning(pidfd.get()));
  EXPECT_FALSE(StillRunning(-1));
}

// A process's start names it among those that had its pid: a later one
// started later; none is told once the pinned process exited (the pid may
// be another's), nor for pid 0 or without a pidfd.
TEST(PeerIdentityTest, TellsWhenAPinnedProcessStartedWhileItRuns) {
  UniqueFd self(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
  ASSERT_TRUE(self);
  const std::optional<uint64_t> ours = ProcessStart(self.get(), ::getpid());
  ASSERT_TRUE(ours.has_value());
  EXPECT_EQ(ProcessStart(self.get(), ::getpid()), ours) << "the same process, the same start";
  absl::SleepFor(absl::Milliseconds(30));  // a few clock ticks
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  ASSERT_TRUE(pidfd);
  const std::optional<uint64_t> theirs = ProcessStart(pidfd.get(), child->pid());
  ASSERT_TRUE(theirs.has_value());
  EXPECT_GT(*theirs, *ours) << "started later";
  ASSERT_TRUE(child->Signal(SIGKILL));
  ASSERT_TRUE(child->Wait().has_value());
  EXPECT_FALSE(ProcessStart(pidfd.get(), child->pid()).has_value());
  // This process stands in for one that took the pid over.
  EXPECT_FALSE(ProcessStart(pidfd.get(), ::getpid()).has_value());
  EXPECT_FALSE(ProcessStart(-1, ::getpid()).has_value());
  EXPECT_FALSE(ProcessStart(self.get(), 0).has_value());
}

// Who one request on a verified session speaks for.
TEST(PeerIdentityTest, ARequestSpeaksForTheSessionOnlyFromItsProcess) {
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  ASSERT_TRUE(pidfd);
  const std::optional<FileId> sleep_file =
      FileIdOf(absl::StrCat("/proc/", child->pid(), "/exe"));
  ASSERT_TRUE(sleep_file.has_value());
  const Identity session{7, 8, child->pid(), "/usr/bin/cam", sleep_file};
  const ucred same{child->pid(), 7, 8};
  // From the verified process, while it runs: the session's identity.
  Identity id = RequestIdentity(session, same, pidfd.get(), /*exe_matters=*/true);
  EXPECT_EQ(id.uid, 7u);
  EXPECT_TRUE(id.exe_file == sleep_file);
  // The same process running another file than the one verified (it
  // exec'd since): uid and gid of the record alone.
  Identity before_exec = session;
  before_exec.exe_file = FileId{1, 2};
  id = RequestIdentity(before_exec, ucred{child->pid(), 9, 10}, pidfd.get(), true);
  EXPECT_EQ(id.uid, 9u);
  EXPECT_FALSE(id.exe_file.has_value());
  // From another process holding the socket: its own uid and gid only.
  id = RequestIdentity(session, ucred{child->pid() + 1, 9, 10}, pidfd.get(), true);
  EXPECT_EQ(id.pid, child->pid() + 1);
  EXPECT_EQ(id.uid, 9u);
  EXPECT_EQ(id.gid, 10u);
  EXPECT_FALSE(id.exe_file.has_value());
  EXPECT_TRUE(id.exe.empty());
  // Pid 0 (a session, and a sender, in pid namespaces hallocd cannot see
  // into: every such process stamps 0) is no one's own: its own gid.
  const Identity unseen{7, 8, 0, "", std::nullopt};
  id = RequestIdentity(unseen, ucred{0, 7, 10}, pidfd.get(), true);
  EXPECT_EQ(id.gid, 10u) << "another process with pid 0 took the session's gid";
  // A policy without exe rules: no poll (an invalid pidfd would fail it),
  // and the executable is left unverified for the request.
  id = RequestIdentity(session, same, /*pidfd=*/-1, /*exe_matters=*/false);
  EXPECT_EQ(id.uid, 7u);
  EXPECT_EQ(id.pid, child->pid());
  EXPECT_EQ(id.exe, "/usr/bin/cam");  // for logs, as an unverified session's
  EXPECT_FALSE(id.exe_file.has_value());
  // The path is the session's own, shared, never copied per request: up
  // to 4 KiB of the client's choosing, whose freed copies fragmented
  // hallocd's heap (~4 KB of RSS per grant made, measured).
  EXPECT_EQ(id.exe.str().data(), session.exe.str().data());
  // Once the verified process has exited, its pid speaks for whoever
  // holds it now: uid and gid of the record alone.
  Identity unverified = session;
  unverified.exe_file.reset();
  const ucred changed{child->pid(), 9, 10};
  // While it runs, the session's process stamped with other ids than the
  // session's is the session while its effective ids are the session's (a
  // setuid or setgid program: a stamp names its real ids), not once they
  // changed (dropped in place: judged as its fork would be).
  const std::pair<uid_t, gid_t> effective{::geteuid(), ::getegid()};
  ASSERT_EQ(EffectiveIds(child->pid()), effective);
  // A leader that exited (here a zombie not yet reaped) tells nothing of
  // the threads its process may still run.
  const pid_t zombie = ::fork();
  if (zombie == 0) ::_exit(0);
  ASSERT_GT(zombie, 0);
  for (int i = 0; i < 500 && EffectiveIds(zombie).has_value(); ++i) ::usleep(1000);
  EXPECT_FALSE(EffectiveIds(zombie).has_value()) << "a zombie's ids were taken";
  ASSERT_EQ(::waitpid(zombie, nullptr, 0), zombie);
  Identity setuid_like = unverified;
  setuid_like.uid = effective.first;
  setuid_like.gid = effective.second;
  EXPECT_EQ(RequestIdentity(setuid_like, changed, pidfd.get(), false).uid, effective.first);
  EXPECT_EQ(RequestIdentity(unverified, changed, pidfd.get(), false).uid, 9u)
      << "its effective ids are not the session's (7, 8): it changed them since";
  ASSERT_TRUE(child->Signal(SIGKILL));
  ASSERT_TRUE(child->Wait().has_value());
  for (bool exe_matters : {true, false}) {
    SCOPED_TRACE(exe_matters);
    for (const Identity* s : {&session, static_cast<const Identity*>(&unverified)}) {
      id = RequestIdentity(*s, changed, pidfd.get(), exe_matters);
      EXPECT_EQ(id.uid, 9u) << "a pid come round to another uid lends it nothing";
      EXPECT_EQ(id.gid, 10u);
      EXPECT_FALSE(id.exe_file.has_value());
    }
  }
  // Nor, with exe rules, the verified executable to the same uid.
  id = RequestIdentity(session, same, pidfd.get(), true);
  EXPECT_FALSE(id.exe_file.has_value());
  // With the session's own uid and gid and no executable to vouch for,
  // nothing is lent: no poll (an invalid pidfd would fail it).
  id = RequestIdentity(unverified, same, -1, true);
  EXPECT_EQ(id.uid, 7u);
  EXPECT_EQ(id.exe, "/usr/bin/cam");
}

// Whoever sends on a session's socket is judged by its own uid and gid
// but pays (quotas) as the connection does.
TEST(PeerIdentityTest, EveryRequestOnAConnectionPaysAsTheConnection) {
  absl::StatusOr<Subprocess> child = Sleeper();
  ASSERT_TRUE(child.ok()) << child.status();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child->pid(), 0)));
  Identity session{300001, 300001, child->pid(), "", std::nullopt};
  session.account_uid = 1001;  // its user namespace's owner
  for (const ucred& sender : {ucred{child->pid(), 300001, 300001},
                              ucred{child->pid() + 1, 300011, 300011}}) {
    const Identity id = RequestIdentity(session, sender, pidfd.get(), false);
    EXPECT_EQ(id.uid, sender.uid);
    EXPECT_EQ(id.charged_uid(), 1001u) << "sender uid " << sender.uid;
  }
  EXPECT_EQ((Identity{5, 5, 1, "", std::nullopt}).charged_uid(), 5u) << "no account: itself";
}

// A peer in a pid namespace of its own: a process holding CAP_SYS_ADMIN
// over that namespace could stamp this peer's pid on its own records, so
// the peer's binary is not vouched for (uid and gid still are).
TEST(PeerIdentityTest, DoesNotVouchForAPeerInAnotherPidNamespace) {
  absl::StatusOr<Subprocess> outer = Subprocess::Spawn(
      {.argv = {"/usr/bin/unshare", "--pid", "--fork", "/bin/sleep", "30"}});
  ASSERT_TRUE(outer.ok()) << outer.status();
  const std::string sleep_bin = std::filesystem::canonical("/bin/sleep");
  // unshare forks the namespace's first process, which execs sleep.
  pid_t inner = -1;
  for (int i = 0; i < 500 && inner < 0; ++i) {
    if (outer->Wait(absl::ZeroDuration()).has_value()) {
      GTEST_SKIP() << "unshare --pid failed here (needs CAP_SYS_ADMIN or user namespaces)";
    }
    std::ifstream in(absl::StrCat("/proc/", outer->pid(), "/task/", outer->pid(), "/children"));
    pid_t p = -1;
    if (in >> p && std::filesystem::exists(absl::StrCat("/proc/", p, "/exe")) &&
        std::filesystem::read_symlink(absl::StrCat("/proc/", p, "/exe")) == sleep_bin) {
      inner = p;
    } else {
      ::usleep(10 * 1000);
    }
  }
  ASSERT_GT(inner, 0) << "the namespace's process never ran sleep";
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, inner, 0)));
  ASSERT_TRUE(pidfd);
  ExeSample s = SampleExe(pidfd.get(), inner);
  EXPECT_EQ(s.path, sleep_bin);
  EXPECT_FALSE(s.file.has_value()) << "vouched for a binary in another pid namespace";
}

// A peer in a user namespace below hallocd's: with CAP_SYS_ADMIN there
// (anyone's, after unshare(CLONE_NEWUSER)) a process may point its own
// /proc/P/exe at any file it can open (prctl PR_SET_MM_MAP), so its
// binary is not vouched for, even one it really runs.
TEST(PeerIdentityTest, DoesNotVouchForAPeerInAnotherUserNamespace) {
  const std::string sleep_bin = std::filesystem::canonical("/bin/sleep");
  absl::StatusOr<Subprocess> inner = Subprocess::Spawn(
      {.argv = {"/usr/bin/unshare", "--user", "--map-root-user", sleep_bin, "30"}});
  ASSERT_TRUE(inner.ok()) << inner.status();
  const pid_t pid = RunningAs(*inner, sleep_bin);
  if (pid < 0) GTEST_SKIP() << "unshare --user failed here (user namespaces disabled?)";
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  ASSERT_TRUE(pidfd);
  ExeSample s = SampleExe(pidfd.get(), pid);
  EXPECT_EQ(s.path, sleep_bin);
  EXPECT_FALSE(s.file.has_value()) << "vouched for a binary in another user namespace";
  // The same binary in hallocd's own namespaces is vouched for.
  absl::StatusOr<Subprocess> plain = Sleeper();
  ASSERT_TRUE(plain.ok()) << plain.status();
  const pid_t plain_pid = RunningAs(*plain, sleep_bin);
  ASSERT_GT(plain_pid, 0);
  UniqueFd plain_pidfd(static_cast<int>(::syscall(SYS_pidfd_open, plain_pid, 0)));
  EXPECT_TRUE(SampleExe(plain_pidfd.get(), plain_pid).file.has_value());
}

// A user's subordinate uids are its own containers' (newuidmap maps no
// other): named by number or by name; root's ranges are nobody's own.
TEST(PeerIdentityTest, ToldWhetherAUidIsAUsersSubordinateOne) {
  const SubordinateUids ranges = SubordinateUids::Parse(
      "alice:100000:65536\n1234:200000:65536\n0:300000:65536\nroot:400000:65536\n");
  EXPECT_TRUE(SubordinateOf(ranges, 100001, 4321, "alice"));
  EXPECT_FALSE(SubordinateOf(ranges, 100001, 4321, "bob"));
  EXPECT_FALSE(SubordinateOf(ranges, 100001, 4321, ""));
  EXPECT_TRUE(SubordinateOf(ranges, 265535, 1234, ""));
  EXPECT_FALSE(SubordinateOf(ranges, 265536, 1234, ""));
  EXPECT_FALSE(SubordinateOf(ranges, 1234, 1234, ""));  // itself is no subordinate
  EXPECT_FALSE(SubordinateOf(ranges, 300001, 0, "root"));
  EXPECT_FALSE(SubordinateOf(ranges, 400001, 0, "root"));
}

// A child in a user namespace of its own, its uid_map written by us (root
// may map any uid) with `map` ("0 4321 1"): its pid, or -1 where user
// namespaces cannot be made here. Killed by the caller.
pid_t InMappedNamespace(const std::string& map) {
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    char c = ::unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
    if (::write(ready[1], &c, 1) != 1) ::_exit(1);
    (void)::read(go[0], &c, 1);  // until the map is written
    for (;;) ::pause();
  }
  ::close(ready[1]);
  ::close(go[0]);
  char c = 'n';
  const bool made = pid > 0 && ::read(ready[0], &c, 1) == 1 && c == 'y';
  ::close(ready[0]);
  if (made) std::ofstream(absl::StrCat("/proc/", pid, "/uid_map")) << map << "\n";
  ::close(go[1]);
  if (!made && pid > 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  return made ? pid : -1;
}

// A process in a user namespace whose map names a uid acts as that uid's
// owner on its files, privileged there: told apart from one whose map does
// not, and from one in our own namespace (which never does).
TEST(PeerIdentityTest, ToldWhetherAPeersUserNamespaceMapsAUid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to write another uid's map";
  pid_t mapped = InMappedNamespace("0 4321 1");
  if (mapped < 0) GTEST_SKIP() << "user namespaces cannot be made here";
  pid_t ranged = -1;
  absl::Cleanup reap = [&] {  // however the test ends
    for (pid_t pid : {mapped, ranged}) {
      if (pid > 0 && ::kill(pid, SIGKILL) == 0) ::waitpid(pid, nullptr, 0);
    }
  };
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, mapped, 0)));
  ASSERT_TRUE(pidfd);
  EXPECT_TRUE(MapsUid(pidfd.get(), mapped, 4321));
  EXPECT_FALSE(MapsUid(pidfd.get(), mapped, 4322));
  EXPECT_FALSE(MapsUid(pidfd.get(), mapped, 0));
  ranged = InMappedNamespace("0 100000 65536");
  ASSERT_GT(ranged, 0);
  UniqueFd ranged_pidfd(static_cast<int>(::syscall(SYS_pidfd_open, ranged, 0)));
  EXPECT_TRUE(MapsUid(ranged_pidfd.get(), ranged, 165535));
  EXPECT_FALSE(MapsUid(ranged_pidfd.get(), ranged, 165536));
  EXPECT_FALSE(MapsUid(ranged_pidfd.get(), ranged, 4321));
  // In our own namespace, which maps every uid: never.
  absl::StatusOr<Subprocess> plain = Sleeper();
  ASSERT_TRUE(plain.ok()) << plain.status();
  UniqueFd plain_pidfd(static_cast<int>(::syscall(SYS_pidfd_open, plain->pid(), 0)));
  EXPECT_FALSE(MapsUid(plain_pidfd.get(), plain->pid(), 4321));
  // Gone: cannot tell, so it may.
  const pid_t gone = mapped;
  mapped = -1;  // reaped here, not again
  ASSERT_EQ(::kill(gone, SIGKILL), 0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);
  EXPECT_TRUE(MapsUid(pidfd.get(), gone, 4322));
}

}  // namespace
}  // namespace halloc
