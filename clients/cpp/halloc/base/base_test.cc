#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "clients/cpp/halloc/base/fork.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// A forked child sees another generation than its parent; the parent's
// stays what it was.
TEST(ForkGenerationTest, AChildIsAnotherGeneration) {
  const uint64_t before = ForkGeneration();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(ForkGeneration() == before + 1 ? 0 : 1);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(ForkGeneration(), before);
}

TEST(UniqueFdTest, ClosesOnDestruction) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  { UniqueFd a(fds[0]); UniqueFd b(fds[1]); EXPECT_TRUE(IsOpen(fds[0])); }
  EXPECT_FALSE(IsOpen(fds[0]));
  EXPECT_FALSE(IsOpen(fds[1]));
}

TEST(UniqueFdTest, MoveTransfersOwnership) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  UniqueFd a(fds[0]);
  UniqueFd b(std::move(a));
  EXPECT_FALSE(a.is_valid());
  EXPECT_EQ(b.get(), fds[0]);
  UniqueFd c;
  c = std::move(b);
  EXPECT_EQ(c.get(), fds[0]);
  EXPECT_TRUE(IsOpen(fds[0]));
}

TEST(UniqueFdTest, ReleaseGivesUpOwnership) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  int raw;
  { UniqueFd a(fds[0]); raw = a.release(); EXPECT_FALSE(a.is_valid()); }
  EXPECT_TRUE(IsOpen(raw));
  UniqueFd again(raw);
}

TEST(UniqueFdTest, DupIsIndependentOwner) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  UniqueFd r(fds[0]);
  absl::StatusOr<UniqueFd> d = r.Dup();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_NE(d->get(), r.get());
  r.reset();
  EXPECT_TRUE(IsOpen(d->get()));
  EXPECT_TRUE(::fcntl(d->get(), F_GETFD) & FD_CLOEXEC);
}

TEST(UniqueFdTest, DupOfInvalidFails) {
  UniqueFd none;
  EXPECT_EQ(none.Dup().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SharedFdTest, LastUserClosesTheFd) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  {
    SharedFd a{UniqueFd(fds[0])};
    {
      SharedFd b = a;
      EXPECT_EQ(b.get(), fds[0]);
      EXPECT_EQ(a.use_count(), 2);
    }
    EXPECT_TRUE(IsOpen(fds[0]));
    EXPECT_EQ(a.use_count(), 1);
  }
  EXPECT_FALSE(IsOpen(fds[0]));
  SharedFd empty{UniqueFd()};
  EXPECT_FALSE(empty.is_valid());
  EXPECT_EQ(empty.get(), -1);
  EXPECT_EQ(empty.Dup().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SharedFdTest, ReleaseGivesTheLastUserTheFdItselfAndOthersADup) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  SharedFd a{UniqueFd(fds[0])};
  SharedFd b = a;
  absl::StatusOr<UniqueFd> dup = a.Release();  // b still uses it
  ASSERT_TRUE(dup.ok());
  EXPECT_NE(dup->get(), fds[0]);
  EXPECT_FALSE(a.is_valid());
  EXPECT_EQ(a.Release().status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<UniqueFd> own = b.Release();  // the last user
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(own->get(), fds[0]);
  EXPECT_TRUE(IsOpen(fds[0]));
  // The dup reaches the same pipe.
  ASSERT_EQ(::write(w.get(), "x", 1), 1);
  char c = 0;
  EXPECT_EQ(::read(dup->get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
}

TEST(OsErrorTest, PrefixedKeepsCodeAndPayloads) {
  absl::Status s = absl::ResourceExhaustedError("quota");
  s.SetPayload("halloc.dev/x", absl::Cord("y"));
  const absl::Status p = Prefixed(s, "Allocate");
  EXPECT_EQ(p.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(p.message(), "Allocate: quota");
  ASSERT_TRUE(p.GetPayload("halloc.dev/x").has_value());
  EXPECT_EQ(*p.GetPayload("halloc.dev/x"), "y");
  EXPECT_TRUE(Prefixed(absl::OkStatus(), "Allocate").ok());
}

TEST(OsErrorTest, MapsCodesAndFormatsMessage) {
  absl::Status s = ErrnoStatus(ENOMEM, "memfd_create");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "memfd_create: Cannot allocate memory");
  EXPECT_EQ(ErrnoStatus(EACCES, "x").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EINVAL, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EIO, "x").code(), absl::StatusCode::kInternal);
}

// hallocd's own calls failing are not the caller's to act on: only running
// out of something says more than INTERNAL.
TEST(OsErrorTest, OwnCallsFailInternalOrExhausted) {
  for (int err : {EACCES, EPERM, ENOENT, EINVAL, EBADF, EIO}) {
    EXPECT_EQ(OwnErrnoStatus(err, "x").code(), absl::StatusCode::kInternal) << err;
  }
  for (int err : {ENOMEM, EMFILE, ENFILE, ENOSPC}) {
    EXPECT_EQ(OwnErrnoStatus(err, "x").code(), absl::StatusCode::kResourceExhausted) << err;
  }
  EXPECT_EQ(OwnErrnoStatus(EACCES, "open(/proc/self/fd/9)").message(),
            "open(/proc/self/fd/9): Permission denied");
}

TEST(OsErrorTest, WireCodesOutsideAbslsAreUnknown) {
  EXPECT_EQ(StatusCodeFromWire(0), absl::StatusCode::kOk);
  EXPECT_EQ(StatusCodeFromWire(8), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(StatusCodeFromWire(16), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(StatusCodeFromWire(17), absl::StatusCode::kUnknown);
  EXPECT_EQ(StatusCodeFromWire(-1), absl::StatusCode::kUnknown);
  EXPECT_EQ(StatusCodeFromWire(int64_t{1} << 40), absl::StatusCode::kUnknown);
}

// A stand-in ioctl: fails with the errnos queued, then succeeds.
struct FakeIoctl {
  static inline std::vector<int> errnos;
  static inline int calls = 0;
  static int Call(int, unsigned long, void*) {
    ++calls;
    if (errnos.empty()) return 0;
    errno = errnos.front();
    errnos.erase(errnos.begin());
    return -1;
  }
  static int Run(std::vector<int> fails) {
    errnos = std::move(fails);
    calls = 0;
    return RetryIoctlWith(&FakeIoctl::Call, -1, 0, nullptr);
  }
};

// Interrupted ioctls are retried, "try again" a bounded number of times
// (a driver or file that kept saying EAGAIN had its caller spin for
// ever), anything else returned at once.
TEST(OsErrorTest, RetryIoctlRetriesInterruptsAndABoundedNumberOfAgains) {
  EXPECT_EQ(FakeIoctl::Run({EINTR, EAGAIN, EINTR, EAGAIN}), 0);
  EXPECT_EQ(FakeIoctl::calls, 5);
  EXPECT_EQ(FakeIoctl::Run(std::vector<int>(kIoctlAgainTries - 1, EAGAIN)), 0);
  EXPECT_EQ(FakeIoctl::Run(std::vector<int>(10 * kIoctlAgainTries, EAGAIN)), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(FakeIoctl::calls, kIoctlAgainTries);
  EXPECT_EQ(FakeIoctl::Run(std::vector<int>(1000, EINTR)), 0) << "interrupts are not counted";
  EXPECT_EQ(FakeIoctl::Run({ENOTTY, EAGAIN}), -1);
  EXPECT_EQ(errno, ENOTTY);
  EXPECT_EQ(FakeIoctl::calls, 1);
}

absl::StatusOr<int> Half(int v) {
  if (v % 2) return absl::InvalidArgumentError("odd");
  return v / 2;
}

absl::StatusOr<int> Quarter(int v) {
  ASSIGN_OR_RETURN(int h, Half(v));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status CheckEven(int v) {
  RETURN_IF_ERROR(Half(v).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(3).ok());
}

TEST(ProtocolTest, CpuHintIsTheCpuPlusOneOrZero) {
  EXPECT_EQ(CpuHint(-1), 0u);
  EXPECT_EQ(CpuHint(0), 1u);
  EXPECT_EQ(CpuHint(5), 6u);
  const uint32_t now = CurrentCpuHint();
  EXPECT_GE(now, 1u);  // sched_getcpu works here
  EXPECT_LE(now, static_cast<uint32_t>(CPU_SETSIZE));
}

TEST(UnixAddressTest, FitsThePathOrSaysWhy) {
  absl::StatusOr<sockaddr_un> a = UnixAddress("/run/halloc/broker.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->sun_family, AF_UNIX);
  EXPECT_STREQ(a->sun_path, "/run/halloc/broker.sock");
  EXPECT_EQ(UnixAddress("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnixAddress(std::string(sizeof(a->sun_path), 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(UnixAddress(std::string(sizeof(a->sun_path) - 1, 'x')).ok());
}

}  // namespace
}  // namespace halloc
