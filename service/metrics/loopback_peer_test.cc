#include "service/metrics/loopback_peer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

// A listener on 127.0.0.1 (any port) and its address.
struct Listener {
  UniqueFd fd;
  sockaddr_in addr{};
};
Listener Listen() {
  Listener l;
  l.fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  l.addr.sin_family = AF_INET;
  l.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(l.addr);
  EXPECT_EQ(::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&l.addr), sizeof(l.addr)), 0);
  EXPECT_EQ(::listen(l.fd.get(), 8), 0);
  EXPECT_EQ(::getsockname(l.fd.get(), reinterpret_cast<sockaddr*>(&l.addr), &len), 0);
  return l;
}

TEST(LoopbackPeerTest, NamesTheUidOfTheProcessAtTheOtherEnd) {
  Listener l = Listen();
  UniqueFd mine(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(mine.get(), reinterpret_cast<sockaddr*>(&l.addr), sizeof(l.addr)), 0);
  UniqueFd accepted(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted);
  absl::StatusOr<uid_t> uid = LoopbackPeerUid(accepted.get());
  ASSERT_TRUE(uid.ok()) << uid.status();
  EXPECT_EQ(*uid, ::geteuid());

  // Another uid's connection, from another loopback address (any local
  // user may pick one: the address says nothing).
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // syscalls only
    ::close(ready[0]);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(1);
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(0x7f000005);  // 127.0.0.5
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0 ||
        ::connect(fd, reinterpret_cast<const sockaddr*>(&l.addr), sizeof(l.addr)) != 0) {
      ::_exit(2);
    }
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(fd, &c, 1);  // until the parent closes its end
    ::_exit(0);
  }
  ::close(ready[1]);
  char c = 0;
  const bool connected = ::read(ready[0], &c, 1) == 1;
  ::close(ready[0]);
  if (!connected) {
    int status = 0;
    ::waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1) GTEST_SKIP() << "cannot become uid 65534";
    FAIL() << "the child could not connect: " << status;
  }
  UniqueFd theirs(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(theirs);
  uid = LoopbackPeerUid(theirs.get());
  ASSERT_TRUE(uid.ok()) << uid.status();
  EXPECT_EQ(*uid, 65534u);
  theirs.reset();
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);

  // Not a TCP socket at all.
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  EXPECT_EQ(LoopbackPeerUid(pair[0]).status().code(), absl::StatusCode::kInvalidArgument);
  ::close(pair[0]);
  ::close(pair[1]);
}

// A peer that wrote and closed before its connection was accepted: its
// socket lingers, orphaned (no process, no inode), and the kernel reports
// it as root's. It was charged to root (a flood of such held root's slots:
// a root scraper was turned away).
TEST(LoopbackPeerTest, APeerThatClosedIsNotFoundNotRoot) {
  Listener l = Listen();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // syscalls only
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(1);
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&l.addr), sizeof(l.addr)) != 0 ||
        ::write(fd, "GET /metr", 9) != 9) {
      ::_exit(2);
    }
    ::close(fd);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1) GTEST_SKIP() << "cannot become uid 65534";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  UniqueFd theirs(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(theirs);
  const absl::StatusOr<uid_t> uid = LoopbackPeerUid(theirs.get());
  EXPECT_EQ(uid.status().code(), absl::StatusCode::kNotFound)
      << (uid.ok() ? absl::StrCat("uid ", *uid) : uid.status().ToString());
}

// hallocd checks at start that the kernel can be asked: a lookup that
// fails, or names another uid, is not taken.
TEST(LoopbackPeerTest, TheCheckTakesOnlyALookupThatNamesThisProcess) {
  EXPECT_TRUE(CheckLoopbackPeerLookup(AF_INET, LoopbackPeerUid).ok());
  const absl::Status refused = CheckLoopbackPeerLookup(
      AF_INET, [](int) -> absl::StatusOr<uid_t> { return absl::NotFoundError("no inet_diag"); });
  EXPECT_EQ(refused.code(), absl::StatusCode::kNotFound) << refused;
  const absl::Status other = CheckLoopbackPeerLookup(
      AF_INET, [](int) -> absl::StatusOr<uid_t> { return ::geteuid() + 1; });
  EXPECT_FALSE(other.ok());
  EXPECT_EQ(CheckLoopbackPeerLookup(AF_UNIX, LoopbackPeerUid).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace halloc
