#include "service/backend/memfd_backend.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

constexpr uint64_t kPage = 4096;

#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020  // <linux/fcntl.h>, 6.3+
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

// Backends here look only at a udmabuf node that is not there: the default
// one reads this kernel's module lists, and on a kernel that builds udmabuf
// read-only views would be refused (these tests failed there).
constexpr char kNoUdmabuf[] = "/nonexistent/udmabuf";

// Whether this kernel seals memfds against exec (6.3+).
bool KernelHasNoexecSeal() {
  UniqueFd probe(::memfd_create("probe", MFD_CLOEXEC | MFD_NOEXEC_SEAL));
  return static_cast<bool>(probe);
}

TEST(MemfdBackendTest, AllocatesZeroedSealedMemoryAcrossSizes) {
  MemfdBackend backend(kNoUdmabuf);
  for (uint64_t size : {kPage, 16 * kPage, uint64_t{1} << 20, uint64_t{8} << 20}) {
    SCOPED_TRACE(size);
    absl::StatusOr<UniqueFd> fd = backend.Allocate({size, "t", 0});
    ASSERT_TRUE(fd.ok()) << fd.status();
    struct stat st;
    ASSERT_EQ(fstat(fd->get(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
    const int seals = fcntl(fd->get(), F_GET_SEALS);
    EXPECT_EQ(seals, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL |
                         (KernelHasNoexecSeal() ? F_SEAL_EXEC : 0));
    EXPECT_NE(ftruncate(fd->get(), size * 2), 0);
    EXPECT_NE(ftruncate(fd->get(), size / 2), 0);
    EXPECT_NE(fcntl(fd->get(), F_ADD_SEALS, F_SEAL_WRITE), 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    const auto* bytes = static_cast<const unsigned char*>(p);
    for (uint64_t i = 0; i < size; i += 997) ASSERT_EQ(bytes[i], 0) << i;
    munmap(p, size);
  }
}

// A buffer can never be made executable (a holder with hallocd's uid could
// otherwise chmod it +x and fexecve it), where the kernel can seal that.
TEST(MemfdBackendTest, ABufferCanNeverBeMadeExecutable) {
  if (!KernelHasNoexecSeal()) GTEST_SKIP() << "this kernel has no MFD_NOEXEC_SEAL (before 6.3)";
  MemfdBackend backend(kNoUdmabuf);
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_NE(::fcntl(fd->get(), F_GET_SEALS) & F_SEAL_EXEC, 0);
  EXPECT_NE(::fchmod(fd->get(), 0700), 0) << "the exec bits could be set";
  EXPECT_EQ(errno, EPERM);
}

TEST(MemfdBackendTest, RejectsZeroSize) {
  MemfdBackend backend(kNoUdmabuf);
  EXPECT_EQ(backend.Allocate({0, "t", 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemfdBackendTest, ReadViewCannotBeMappedOrProtectedWritable) {
  MemfdBackend backend(kNoUdmabuf);
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  void* w = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0);
  ASSERT_NE(w, MAP_FAILED);
  std::memcpy(w, "pattern", 7);

  absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_EQ(mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, ro->get(), 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  void* r = mmap(nullptr, kPage, PROT_READ, MAP_SHARED, ro->get(), 0);
  ASSERT_NE(r, MAP_FAILED);
  EXPECT_EQ(std::memcmp(r, "pattern", 7), 0);  // same pages
  EXPECT_NE(mprotect(r, kPage, PROT_READ | PROT_WRITE), 0);
  EXPECT_EQ(errno, EACCES);
  EXPECT_LT(write(ro->get(), "x", 1), 0);
  munmap(r, kPage);
  munmap(w, kPage);
}

// An unprivileged uid other than the daemon's, for the reopen tests.
constexpr uid_t kStranger = 65534;
// Exit code of a child that could not become kStranger.
constexpr int kCannotSwitchUid = 255;

// Runs `body` in a forked child as kStranger (uids are per process, so the
// attacker needs its own process; fds are inherited across fork just as they
// are passed over SCM_RIGHTS). Returns the child's exit code, or
// kCannotSwitchUid.
template <typename F>
int AsStranger(F body) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(kStranger) != 0 ||
        setuid(kStranger) != 0) {
      _exit(kCannotSwitchUid);
    }
    _exit(body());
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// What a holder of a read-only memfd `fd` of another uid could do to the
// memory behind it, one bit per attempt the kernel did NOT refuse as
// expected. 0: everything refused.
enum StrangerEscape {
  kReopenedReadWrite = 1 << 0,  // open(/proc/self/fd/N, O_RDWR) != EACCES
  kReopenedWriteOnly = 1 << 1,  // ... O_WRONLY
  kReopenedReadOnly = 1 << 2,   // ... O_RDONLY (no reason to allow it)
  kChmodded = 1 << 3,           // fchmod(fd, 0777) != EPERM
  kAddedSeals = 1 << 4,         // F_ADD_SEALS succeeded
  kResized = 1 << 5,            // ftruncate or fallocate succeeded
  kWroteBuffer = 1 << 6,        // wrote "evil" through a writable reopen
};

int TryToEscapeReadOnly(int fd, size_t size) {
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  int escaped = 0;
  int rw = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (rw >= 0 || errno != EACCES) escaped |= kReopenedReadWrite;
  if (rw >= 0) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
    if (p != MAP_FAILED) {
      std::memcpy(p, "evil", 4);
      escaped |= kWroteBuffer;
    }
  }
  int wo = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (wo >= 0 || errno != EACCES) escaped |= kReopenedWriteOnly;
  if (wo >= 0 && pwrite(wo, "evil", 4, 0) == 4) escaped |= kWroteBuffer;
  int ro = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ro >= 0 || errno != EACCES) escaped |= kReopenedReadOnly;
  // Making the inode writable again would reopen the first door.
  if (fchmod(fd, 0777) == 0 || errno != EPERM) escaped |= kChmodded;
  // F_SEAL_WRITE would break the owner's writable mapping; the memfd is
  // already F_SEAL_SEAL'ed and the fd is not writable, so both refuse it.
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == 0) escaped |= kAddedSeals;
  if (ftruncate(fd, 0) == 0 || fallocate(fd, 0, 0, size * 2) == 0 ||
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size) == 0) {
    escaped |= kResized;
  }
  return escaped;
}

TEST(MemfdBackendTest, InodeIsReadableByItsOwnerOnly) {
  MemfdBackend backend(kNoUdmabuf);
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok()) << fd.status();
  struct stat st;
  ASSERT_EQ(fstat(fd->get(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0400u);
  EXPECT_EQ(st.st_uid, geteuid());
  // The allocation's own fd and its views keep their access modes.
  EXPECT_EQ(fcntl(fd->get(), F_GETFL) & O_ACCMODE, O_RDWR);
  absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
}

// Issue #10: a memfd inode is created mode 0777, so a receiver of a
// read-only view could open("/proc/self/fd/N", O_RDWR) and write into the
// owner's buffer.
TEST(MemfdBackendTest, ReadViewCannotBeReopenedWritableByAnotherUid) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child as uid " << kStranger
                 << " (the daemon normally runs as root)";
  }
  MemfdBackend backend(kNoUdmabuf);
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok()) << fd.status();
  void* w = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd->get(), 0);
  ASSERT_NE(w, MAP_FAILED);
  std::memcpy(w, "pattern", 7);
  absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
  ASSERT_TRUE(ro.ok()) << ro.status();

  const int ro_fd = ro->get();
  const int escaped = AsStranger([ro_fd] { return TryToEscapeReadOnly(ro_fd, kPage); });
  if (escaped == kCannotSwitchUid) {
    munmap(w, kPage);
    GTEST_SKIP() << "cannot switch to uid " << kStranger
                 << " here (user namespace without it?)";
  }
  EXPECT_EQ(escaped & kReopenedReadWrite, 0) << "reopened O_RDWR";
  EXPECT_EQ(escaped & kReopenedWriteOnly, 0) << "reopened O_WRONLY";
  EXPECT_EQ(escaped & kReopenedReadOnly, 0) << "reopened O_RDONLY";
  EXPECT_EQ(escaped & kChmodded, 0) << "fchmod'ed the inode";
  EXPECT_EQ(escaped & kAddedSeals, 0) << "added a seal";
  EXPECT_EQ(escaped & kResized, 0) << "resized or punched the memfd";
  EXPECT_EQ(escaped & kWroteBuffer, 0) << "wrote into the owner's buffer";
  EXPECT_EQ(std::memcmp(w, "pattern", 7), 0);
  struct stat st;
  ASSERT_EQ(fstat(fd->get(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0400u);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kPage));
  munmap(w, kPage);
}

// The mode must not lock the daemon itself out: a hallocd that is not root
// still opens read-only views (owner read), and no fd it hands out can be
// reopened writable without first fchmod'ing the inode (which its own uid
// can: same-uid holders are not protected).
TEST(MemfdBackendTest, NonRootDaemonStillOpensReadViews) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child as uid " << kStranger;
  }
  const int result = AsStranger([] {
    MemfdBackend backend(kNoUdmabuf);
    absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
    if (!fd.ok()) return 1;
    absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
    if (!ro.ok() || (fcntl(ro->get(), F_GETFL) & O_ACCMODE) != O_RDONLY) return 2;
    const std::string path = "/proc/self/fd/" + std::to_string(ro->get());
    if (open(path.c_str(), O_RDWR | O_CLOEXEC) >= 0 || errno != EACCES) return 3;
    return 0;
  });
  if (result == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot switch to uid " << kStranger << " here";
  }
  EXPECT_NE(result, 1) << "Allocate failed as a non-root daemon";
  EXPECT_NE(result, 2) << "OpenView(kRead) failed as a non-root daemon";
  EXPECT_NE(result, 3) << "the daemon's own uid reopened a view O_RDWR";
  EXPECT_EQ(result, 0);
}

// A read-only view hallocd cannot open (its own memfd's mode changed under
// it) is hallocd's failure: INTERNAL, not PERMISSION_DENIED (the caller
// may do what it asked; it was refused nothing).
TEST(MemfdBackendTest, AViewHallocdCannotOpenIsItsOwnError) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child as uid " << kStranger;
  }
  const int result = AsStranger([] {
    MemfdBackend backend(kNoUdmabuf);
    absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
    if (!fd.ok() || fchmod(fd->get(), 0) != 0) return 1;
    absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
    if (ro.ok()) return 2;
    return ro.status().code() == absl::StatusCode::kInternal ? 0 : 3;
  });
  if (result == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot switch to uid " << kStranger << " here";
  }
  EXPECT_NE(result, 1) << "Allocate or fchmod failed";
  EXPECT_NE(result, 2) << "opened a view of a mode 0000 inode as a non-root daemon";
  EXPECT_NE(result, 3) << "not INTERNAL";
  EXPECT_EQ(result, 0);
}

// What the mode cannot stop: a holder with the daemon's uid owns the inode,
// so it may fchmod it writable again and reopen its read-only view
// read-write. Read-only therefore binds no holder of that uid (a hallocd run
// by a user: every client), and the backend says so.
TEST(MemfdBackendTest, ReadViewDoesNotBindTheDaemonsOwnUid) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child as uid " << kStranger;
  }
  const int result = AsStranger([] {
    MemfdBackend backend(kNoUdmabuf);
    if (backend.CanEnforceFor(CpuAccess::kRead, {kStranger})) return 1;
    absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
    if (!fd.ok()) return 2;
    absl::StatusOr<UniqueFd> ro = backend.OpenView(*fd, ViewRights{CpuAccess::kRead});
    if (!ro.ok()) return 2;
    if (fchmod(ro->get(), 0600) != 0) return 3;
    const std::string path = "/proc/self/fd/" + std::to_string(ro->get());
    UniqueFd rw(open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!rw || pwrite(rw.get(), "evil", 4, 0) != 4) return 3;
    return 0;
  });
  if (result == kCannotSwitchUid) {
    GTEST_SKIP() << "cannot switch to uid " << kStranger << " here";
  }
  EXPECT_NE(result, 1) << "read-only said to bind the daemon's own uid";
  EXPECT_NE(result, 2) << "Allocate or OpenView failed as a non-root daemon";
  EXPECT_NE(result, 3) << "the daemon's uid could not widen its view: the backend "
                          "may bind it after all (then say so)";
  EXPECT_EQ(result, 0);
}

// Whom read-only binds: every uid but a non-root daemon's own; root holders
// are outside every policy, not asked about (a root daemon's uid is root).
TEST(MemfdBackendTest, ReadOnlyBindsEveryUidButTheDaemonsOwn) {
  const MemfdBackend as_user({kNoUdmabuf, "", ""}, /*owner=*/1234);
  EXPECT_FALSE(as_user.CanEnforceFor(CpuAccess::kRead, {1234}));
  EXPECT_TRUE(as_user.CanEnforceFor(CpuAccess::kRead, {1235}));
  EXPECT_TRUE(as_user.CanEnforceFor(CpuAccess::kReadWrite, {1234}));
  EXPECT_FALSE(as_user.CanEnforceFor(CpuAccess::kNone, {1235}));
  // Nor one privileged in a user namespace that maps the daemon's uid.
  EXPECT_FALSE(as_user.CanEnforceFor(CpuAccess::kRead, {1235, /*maps_hallocd_uid=*/true}));
  const MemfdBackend as_root({kNoUdmabuf, "", ""}, /*owner=*/0);
  EXPECT_TRUE(as_root.CanEnforceFor(CpuAccess::kRead, {0}));
  EXPECT_TRUE(as_root.CanEnforceFor(CpuAccess::kRead, {1234}));
  // Where udmabuf could come, read-only binds nobody.
  testing::TempDir dir("memfd-owner");
  const std::string node = dir / "udmabuf";
  std::ofstream(node) << "";
  const MemfdBackend with_udmabuf({node, "", ""}, /*owner=*/1234);
  EXPECT_FALSE(with_udmabuf.CanEnforceFor(CpuAccess::kRead, {1235}));
}

TEST(MemfdBackendTest, NoCpuAccessIsRefusedNotGranted) {
  MemfdBackend backend(kNoUdmabuf);
  EXPECT_FALSE(backend.CanEnforce(CpuAccess::kNone));
  absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(backend.OpenView(*fd, ViewRights{CpuAccess::kNone}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MemfdBackendTest, AttachLimitsHoldOnlyWithoutUdmabuf) {
  MemfdBackend without("/nonexistent/udmabuf");
  MemfdBackend with("/proc/self/exe");  // "present"
  EXPECT_TRUE(without.CanLimitAttach());
  EXPECT_FALSE(with.CanLimitAttach());
  // Nor can read-only: a read-only holder could turn the memfd into a
  // writable dma-buf through udmabuf.
  EXPECT_TRUE(without.CanEnforce(CpuAccess::kRead));
  EXPECT_FALSE(with.CanEnforce(CpuAccess::kRead));
  EXPECT_TRUE(with.CanEnforce(CpuAccess::kReadWrite));
  absl::StatusOr<UniqueFd> fd = without.Allocate({kPage, "t", 0});
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(with.OpenView(*fd, ViewRights{CpuAccess::kRead}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ViewRights limited{CpuAccess::kRead, std::vector<std::string>{"vgem"}};
  EXPECT_TRUE(without.OpenView(*fd, limited).ok());
  EXPECT_EQ(with.OpenView(*fd, limited).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A memfd needs a view only to narrow CPU rights.
  EXPECT_FALSE(without.NeedsView({CpuAccess::kReadWrite, std::vector<std::string>{}}));
  EXPECT_TRUE(without.NeedsView({CpuAccess::kRead, std::nullopt}));
}

// udmabuf that comes after start counts from then on: a module loaded later
// (its /sys/module entry, whatever /dev hallocd sees) or its node appearing;
// and one the running kernel lists can come at any time, so it counts from
// the start.
TEST(MemfdBackendTest, UdmabufThatComesLaterOrCanComeCounts) {
  testing::TempDir dir("udmabuf");
  UdmabufSources sources{dir / "dev-udmabuf", dir / "sys-module-udmabuf", dir / "modules"};
  ASSERT_EQ(::mkdir(sources.modules_dir.c_str(), 0755), 0);
  std::ofstream(sources.modules_dir + "/modules.dep")
      << "kernel/drivers/gpu/drm/vgem/vgem.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz\n";
  std::ofstream(sources.modules_dir + "/modules.builtin") << "kernel/drivers/dma-buf/dma-buf.ko\n";
  {
    MemfdBackend backend(sources);
    EXPECT_TRUE(backend.CanEnforce(CpuAccess::kRead));
    EXPECT_TRUE(backend.CanLimitAttach());
    absl::StatusOr<UniqueFd> fd = backend.Allocate({kPage, "t", 0});
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(::mkdir(sources.module.c_str(), 0755), 0);  // loaded after start
    EXPECT_FALSE(backend.CanEnforce(CpuAccess::kRead));
    EXPECT_FALSE(backend.CanLimitAttach());
    EXPECT_EQ(backend.OpenView(*fd, ViewRights{CpuAccess::kRead}).status().code(),
              absl::StatusCode::kFailedPrecondition);
    ASSERT_EQ(::rmdir(sources.module.c_str()), 0);
    std::ofstream(sources.device) << "";  // the node only
    EXPECT_FALSE(backend.CanEnforce(CpuAccess::kRead));
    ASSERT_EQ(::unlink(sources.device.c_str()), 0);
    EXPECT_TRUE(backend.CanEnforce(CpuAccess::kRead));
  }
  for (const char* listed : {"modules.dep", "modules.builtin"}) {
    SCOPED_TRACE(listed);
    std::ofstream(sources.modules_dir + "/" + listed, std::ios::app)
        << "kernel/drivers/dma-buf/udmabuf.ko" << (listed[8] == 'd' ? ".xz:" : "") << "\n";
    MemfdBackend backend(sources);
    EXPECT_FALSE(backend.CanEnforce(CpuAccess::kRead)) << "a loadable udmabuf was ignored";
    EXPECT_FALSE(backend.CanLimitAttach());
    std::ofstream(sources.modules_dir + "/" + listed) << "";
  }
}

// Module lists that are there but cannot be read count as naming udmabuf
// (fail closed). Under the shipped unit's former ProtectKernelModules=,
// /usr/lib/modules was hidden, the lists read as empty, and memfd handed
// out read-only views that a udmabuf loaded later would have made writable.
// Lists that are not there at all name nothing.
TEST(MemfdBackendTest, ModuleListsThatCannotBeReadCountAsListingUdmabuf) {
  testing::TempDir dir("udmabuf");
  const std::string not_a_dir = dir / "modules";
  std::ofstream(not_a_dir) << "";  // "<file>/modules.dep": ENOTDIR
  MemfdBackend unreadable(UdmabufSources{dir / "dev", dir / "sys", not_a_dir});
  EXPECT_FALSE(unreadable.CanEnforce(CpuAccess::kRead));
  EXPECT_FALSE(unreadable.CanLimitAttach());
  MemfdBackend absent(UdmabufSources{dir / "dev", dir / "sys", dir / "no-such-dir"});
  EXPECT_TRUE(absent.CanEnforce(CpuAccess::kRead));
  EXPECT_TRUE(absent.CanLimitAttach());
}

}  // namespace
}  // namespace halloc
