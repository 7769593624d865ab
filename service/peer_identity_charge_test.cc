// ChargedUid: whom a peer in a user namespace below hallocd's is charged
// as (its namespace's owner, or a container's root).
#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"
#include "service/peer_identity.h"
#include "service/peer_identity_testing.h"
#include "service/util/subordinate_uids.h"

namespace halloc {
namespace {

// A peer in a user namespace below ours is charged to the uid (of ours)
// that owns the topmost one between, unless that is root or hallocd's own
// uid (here: this test's): a user's subordinate uids are that user, however
// deep. Root's namespaces that map root to root (this test's unshare
// --map-root-user: no root of a container's own) are charged by the
// slice of a listed range, or as themselves outside every range. A peer
// in our own namespace is charged its own uid, and one that is gone to no
// one.
TEST(PeerIdentityTest, ChargesAPeerInAUserNamespaceToItsOwner) {
  const std::string sleep_bin = std::filesystem::canonical("/bin/sleep");
  constexpr uid_t kSeen = 1065540;  // whatever SO_PEERCRED said
  const SubordinateUids none;
  // Root's range, two slices: kSeen is in the second.
  const SubordinateUids roots = SubordinateUids::Parse("root:1000000:131072\n");
  constexpr uid_t kSlice = 1065536;
  {
    absl::StatusOr<Subprocess> plain = Sleeper();
    ASSERT_TRUE(plain.ok());
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, plain->pid(), 0)));
    absl::StatusOr<uid_t> charged = ChargedUid(pidfd.get(), plain->pid(), kSeen, none);
    ASSERT_TRUE(charged.ok()) << charged.status();
    EXPECT_EQ(*charged, kSeen);
    charged = ChargedUid(pidfd.get(), plain->pid(), kSeen, roots);
    ASSERT_TRUE(charged.ok()) << charged.status();
    EXPECT_EQ(*charged, kSeen) << "a process of our own namespace is charged as itself";
    // Out of fds to look with: charged as itself, a subordinate uid would
    // dodge its owner's limits (it was); refused instead.
    charged = WithNoFdFree([&] { return ChargedUid(pidfd.get(), plain->pid(), kSeen, none); });
    EXPECT_EQ(charged.status().code(), absl::StatusCode::kResourceExhausted)
        << (charged.ok() ? absl::StrCat("charged to uid ", *charged) : charged.status().ToString());
  }
  // As uid 1001 where this test may switch (root, no sandbox).
  const std::vector<std::string> as_1001 = {"/usr/bin/setpriv", "--reuid=1001", "--regid=1001",
                                            "--clear-groups"};
  bool other_owner = false;
  {
    std::vector<std::string> probe = as_1001;
    probe.push_back("/bin/true");
    absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = probe});
    const std::optional<int> st = p.ok() ? p->Wait(absl::Seconds(10)) : std::nullopt;
    other_owner = st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0;
  }
  for (bool by_1001 : {false, true}) {
    if (by_1001 && !other_owner) continue;
    for (int depth : {1, 2}) {
      SCOPED_TRACE(absl::StrCat(depth, " user namespaces down, made by ",
                                by_1001 ? "uid 1001" : "this test's uid"));
      std::vector<std::string> argv = by_1001 ? as_1001 : std::vector<std::string>{};
      for (int i = 0; i < depth; ++i) {
        argv.insert(argv.end(), {"/usr/bin/unshare", "--user", "--map-root-user"});
      }
      argv.insert(argv.end(), {sleep_bin, "30"});
      absl::StatusOr<Subprocess> inner = Subprocess::Spawn({.argv = argv});
      ASSERT_TRUE(inner.ok()) << inner.status();
      const pid_t pid = RunningAs(*inner, sleep_bin);
      if (pid < 0) GTEST_SKIP() << "unshare --user failed here (user namespaces disabled?)";
      UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
      ASSERT_TRUE(pidfd);
      absl::StatusOr<uid_t> charged = ChargedUid(pidfd.get(), pid, kSeen, none);
      ASSERT_TRUE(charged.ok()) << charged.status();
      EXPECT_EQ(*charged, by_1001 ? uid_t{1001} : kSeen);
      charged = ChargedUid(pidfd.get(), pid, kSeen, roots);
      ASSERT_TRUE(charged.ok()) << charged.status();
      EXPECT_EQ(*charged, by_1001 ? uid_t{1001} : kSlice) << "with root's range listed";
      inner->Signal(SIGKILL);
      (void)inner->Wait();
      EXPECT_EQ(ChargedUid(pidfd.get(), pid, kSeen, roots).status().code(),
                absl::StatusCode::kNotFound);
    }
  }
  if (!other_owner) {
    GTEST_SKIP() << "cannot run as uid 1001 here (not root, or a sandbox's user namespace): "
                    "charging to another owner is not checked (abuse_test checks it)";
  }
}

// A container's processes (root's namespaces) are charged as the uid its
// root is to hallocd, whatever its block: containers given 1,024 uids each
// from one slice of root's range (Podman's --userns=auto) apart, one from
// no listed range as one. No root mapped: its lowest uid. (Root mapped
// to root, the case of ChargesAPeerInAUserNamespaceToItsOwner: by slice
// of a listed range, else as itself.)
TEST(PeerIdentityTest, ChargesAContainersProcessesAsItsRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "writing a user namespace's map needs root";
  const SubordinateUids roots = SubordinateUids::Parse("root:1000000:65536\n");
  struct Case {
    std::string map;
    uid_t inside, seen;
    uid_t charged_listed, charged_unlisted;
    bool own_block = true;  // `seen` is of the container's own block of uids
  };
  const std::vector<Case> cases = {
      {"0 1000000 1024\n", 5, 1000005, 1000000, 1000000},
      {"0 1001024 1024\n", 5, 1001029, 1001024, 1001024},
      // Its uid 1 a login's (LXD's raw.idmap): still the container's, but
      // that uid's own connections come from the host too.
      {"0 2000000 1\n1 1001 1\n2 2000002 65534\n", 1, 1001, 2000000, 2000000, false},
      {"0 3000000 65536\n", 700, 3000700, 3000000, 3000000},
      // No root: its lowest uid.
      {"1 1002049 10\n", 1, 1002049, 1002049, 1002049},
      {"1 1002049 10\n", 5, 1002053, 1002049, 1002049},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("map \"", c.map, "\", as its uid ", c.inside));
    ContainerProcess container(c.map, c.inside);
    if (std::optional<std::string> why = container.WhyNotMade()) GTEST_SKIP() << *why;
    ASSERT_EQ(container.made(), ContainerProcess::Made::kYes);
    absl::StatusOr<uid_t> listed = ChargedUid(container.pidfd(), container.pid(), c.seen, roots);
    absl::StatusOr<uid_t> unlisted =
        ChargedUid(container.pidfd(), container.pid(), c.seen, SubordinateUids());
    ASSERT_TRUE(listed.ok() && unlisted.ok()) << listed.status() << " " << unlisted.status();
    EXPECT_EQ(*listed, c.charged_listed) << "with root's range listed";
    EXPECT_EQ(*unlisted, c.charged_unlisted) << "with no range listed";
    // Its block's uids tell of it from now on (ConnectRate's first check).
    EXPECT_EQ(KnownContainerCharge(c.seen),
              c.own_block ? std::optional<uid_t>(c.charged_unlisted) : std::nullopt)
        << "as uid " << c.seen;
  }
  EXPECT_EQ(KnownContainerCharge(1001024 + 1024), std::nullopt) << "a uid no container maps";
  // Gone: charged to no one.
  int pidfd = -1;
  pid_t pid = -1;
  {
    ContainerProcess gone("0 1000000 1024\n", 5);
    ASSERT_EQ(gone.made(), ContainerProcess::Made::kYes);
    pidfd = ::dup(gone.pidfd());
    pid = gone.pid();
  }
  UniqueFd held(pidfd);
  EXPECT_EQ(ChargedUid(held.get(), pid, 1000005, roots).status().code(),
            absl::StatusCode::kNotFound);
}

// A container's uid that makes a user namespace of its own owns it as a
// uid of ours (the container's map of it): charged as its container (the
// uid the container's root is, from the map of another of its processes),
// listed or not, not as itself (else a container's root could setuid to
// each of its uids and unshare: a uid apart for each) nor as its slice
// (which, for blocks smaller than a slice, is another container's).
TEST(PeerIdentityTest, AContainersUidThatUnsharesIsChargedAsTheContainer) {
  if (::geteuid() != 0) GTEST_SKIP() << "writing a user namespace's map needs root";
  if (!UnprivilegedUserNamespaces()) {
    GTEST_SKIP() << "a container's uid may not make a user namespace here";
  }
  // Root's namespace (a container of 1,024 uids, the second block of a
  // slice) with a process in it; as its uid 5 (ours: 1001029), another
  // in a namespace of its own, its root uid 5.
  std::optional<ContainerProcess> nested;
  nested.emplace("0 1001024 1024\n", 5, /*nest=*/true, /*nest_later=*/false,
                 /*keep_one_in=*/true);
  if (std::optional<std::string> why = nested->WhyNotMade()) GTEST_SKIP() << *why;
  ASSERT_EQ(nested->made(), ContainerProcess::Made::kYes);
  // Found in /proc (no process to start from): the one kept in it.
  absl::StatusOr<std::optional<uid_t>> found = NamespaceRoot(nested->container_namespace());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, std::optional<uid_t>(1001024));
  const SubordinateUids roots = SubordinateUids::Parse("root:1000000:65536\n");
  absl::StatusOr<uid_t> listed = ChargedUid(nested->pidfd(), nested->pid(), 1001029, roots);
  absl::StatusOr<uid_t> unlisted =
      ChargedUid(nested->pidfd(), nested->pid(), 1001029, SubordinateUids());
  ASSERT_TRUE(listed.ok() && unlisted.ok()) << listed.status() << " " << unlisted.status();
  EXPECT_EQ(*listed, 1001024u) << "charged as its container's root";
  EXPECT_EQ(*unlisted, 1001024u) << "listed or not";
  // Had it gone there after ChargedUid looked at the container's
  // namespace, the map it has now (its root 1001029) is not that
  // namespace's: the container's is.
  listed = ContainerCharged(nested->pidfd(), nested->pid(), nested->container_namespace(),
                            nested->container_namespace(), 1001029, roots);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(*listed, 1001024u) << "by the map of the namespace it was in";
  // Remembered once no process is left in it (this test holds it).
  const int container_ns = ::fcntl(nested->container_namespace(), F_DUPFD_CLOEXEC, 0);
  ASSERT_GE(container_ns, 0);
  UniqueFd held(container_ns);
  nested.reset();
  absl::StatusOr<std::optional<uid_t>> root = NamespaceRoot(held.get());
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root, std::optional<uid_t>(1001024));
}

// This thread with hallocd.service's credentials while it lives: its
// effective uid not root (1234) and CAP_SYS_PTRACE its only effective
// capability (its real uid stays root, so its permitted set keeps the
// rest, restored after). Raw syscalls: this thread's alone.
class AsHallocdsUser {
 public:
  AsHallocdsUser() {
    if (::syscall(SYS_capget, &header_, saved_) != 0) return;
    if (::syscall(SYS_setresuid, -1, 1234, -1) != 0) return;
    changed_ = true;
    __user_cap_data_struct cut[2] = {saved_[0], saved_[1]};
    cut[0].effective = cut[1].effective = 0;
    cut[CAP_TO_INDEX(CAP_SYS_PTRACE)].effective = CAP_TO_MASK(CAP_SYS_PTRACE);
    ok_ = ::syscall(SYS_capset, &header_, cut) == 0;
  }
  ~AsHallocdsUser() {
    if (!changed_) return;
    EXPECT_EQ(::syscall(SYS_setresuid, -1, 0, -1), 0);
    EXPECT_EQ(::syscall(SYS_capset, &header_, saved_), 0);
  }
  bool ok() const { return ok_; }

 private:
  __user_cap_header_struct header_{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct saved_[2] = {};
  bool changed_ = false, ok_ = false;
};

// A container whose processes all went below namespaces of their own
// (its own process, as a uid of it, and none is left in it): whose they
// are cannot be told, and they are refused, not charged as a uid of
// their choosing; once one connected from the container's namespace, the
// map it showed charges them. As hallocd.service's user, which may see
// every process's namespace (CAP_SYS_PTRACE) but enter none.
TEST(PeerIdentityTest, AContainerWithNoProcessInItsNamespaceIsRefusedUntilOneShowsItsMap) {
  if (::geteuid() != 0) GTEST_SKIP() << "writing a user namespace's map needs root";
  if (!UnprivilegedUserNamespaces()) {
    GTEST_SKIP() << "a container's uid may not make a user namespace here";
  }
  ContainerProcess untold("0 1003072 1024\n", 5, /*nest=*/true);
  if (std::optional<std::string> why = untold.WhyNotMade()) GTEST_SKIP() << *why;
  ASSERT_EQ(untold.made(), ContainerProcess::Made::kYes);
  ContainerProcess told("0 1002048 1024\n", 5, /*nest=*/true, /*nest_later=*/true);
  ASSERT_EQ(told.made(), ContainerProcess::Made::kYes);
  AsHallocdsUser as_hallocd;
  ASSERT_TRUE(as_hallocd.ok()) << "setresuid or capset: " << std::strerror(errno);
  absl::StatusOr<std::optional<uid_t>> root = NamespaceRoot(untold.container_namespace());
  EXPECT_EQ(root.status().code(), absl::StatusCode::kUnavailable)
      << (root.ok() ? "told with no process in it" : root.status().ToString());
  absl::StatusOr<uid_t> charged =
      ChargedUid(untold.pidfd(), untold.pid(), 1003077, SubordinateUids());
  EXPECT_EQ(charged.status().code(), absl::StatusCode::kPermissionDenied)
      << (charged.ok() ? absl::StrCat("charged as uid ", *charged) : charged.status().ToString());
  // So is one that went below after ChargedUid looked at it right in the
  // container's namespace.
  charged = ContainerCharged(untold.pidfd(), untold.pid(), untold.container_namespace(),
                             untold.container_namespace(), 1003077, SubordinateUids());
  EXPECT_EQ(charged.status().code(), absl::StatusCode::kPermissionDenied)
      << (charged.ok() ? absl::StrCat("charged as uid ", *charged) : charged.status().ToString());
  // Right in its container's namespace: its own map.
  charged = ChargedUid(told.pidfd(), told.pid(), 1002053, SubordinateUids());
  ASSERT_TRUE(charged.ok()) << charged.status();
  EXPECT_EQ(*charged, 1002048u);
  // The same process, gone on below (the only one: none left in it): as
  // its container, as it showed.
  ASSERT_TRUE(told.Nest());
  charged = ChargedUid(told.pidfd(), told.pid(), 1002053, SubordinateUids());
  ASSERT_TRUE(charged.ok()) << charged.status();
  EXPECT_EQ(*charged, 1002048u) << "as its container's root, which it showed";
}

// A container with no root mapped: its lowest uid.
TEST(PeerIdentityTest, AContainerWithNoRootIsChargedAsItsLowestUid) {
  absl::StatusOr<IdMap> map = IdMap::Parse("1 5000001 65535\n70000 4000000 10\n");
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(ChargeOfMap(*map), 4000000u);
  map = IdMap::Parse("0 0 1\n1 5000001 10\n");  // root is root: no container's
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(ChargeOfMap(*map), std::nullopt);
  map = IdMap::Parse("5 0 1\n");
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(ChargeOfMap(*map), std::nullopt);
}

// Out of fds to read a container's map with: refused, not charged as a
// uid of its own choosing.
TEST(PeerIdentityTest, OutOfFdsToReadAContainersMapIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "writing a user namespace's map needs root";
  ContainerProcess container("0 1000000 1024\n", 5);
  if (std::optional<std::string> why = container.WhyNotMade()) GTEST_SKIP() << *why;
  ASSERT_EQ(container.made(), ContainerProcess::Made::kYes);
  // Its namespace and ours (NS_GET_PARENT) open; not its map.
  absl::StatusOr<uid_t> charged = WithFdsFree(2, [&] {
    return ChargedUid(container.pidfd(), container.pid(), 1000005, SubordinateUids());
  });
  EXPECT_EQ(charged.status().code(), absl::StatusCode::kResourceExhausted)
      << (charged.ok() ? absl::StrCat("charged to uid ", *charged) : charged.status().ToString());
  charged = WithFdsFree(3, [&] {
    return ChargedUid(container.pidfd(), container.pid(), 1000005, SubordinateUids());
  });
  ASSERT_TRUE(charged.ok()) << charged.status();
  EXPECT_EQ(*charged, 1000000u);
}

}  // namespace
}  // namespace halloc
