#include "service/util/unix_listener.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

class UnixListenerTest : public ::testing::Test {
 protected:
  // Whether a client of `type` can connect to `path`.
  static bool Connects(const std::string& path, int type) {
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    return addr.ok() && fd &&
           ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) == 0;
  }

  testing::TempDir dir_{"listener"};
};

TEST_F(UnixListenerTest, ListensWithTheModeGiven) {
  const std::string path = dir_ / "s.sock";
  absl::StatusOr<BoundSocket> fd = BindUnixSocket(path, SOCK_SEQPACKET, 0640);
  ASSERT_TRUE(fd.ok()) << fd.status();
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_TRUE(Connects(path, SOCK_SEQPACKET));
}

TEST_F(UnixListenerTest, ReplacesAStaleSocketFile) {
  const std::string path = dir_ / "s.sock";
  { ASSERT_TRUE(BindUnixSocket(path, SOCK_STREAM, 0600).ok()); }  // closed: stale now
  ASSERT_TRUE(std::filesystem::exists(path));
  ASSERT_FALSE(Connects(path, SOCK_STREAM));
  absl::StatusOr<BoundSocket> again = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(Connects(path, SOCK_SEQPACKET));
}

TEST_F(UnixListenerTest, NeverTakesOverALiveServersPath) {
  const std::string path = dir_ / "s.sock";
  for (int live_type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    absl::StatusOr<BoundSocket> live = BindUnixSocket(path, live_type, 0600);
    ASSERT_TRUE(live.ok()) << live.status();
    absl::StatusOr<BoundSocket> second = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
    EXPECT_EQ(RemoveStaleSocket(path).code(), absl::StatusCode::kAlreadyExists);
    EXPECT_TRUE(Connects(path, live_type));  // the live one still serves
    live->fd.reset();
    ASSERT_TRUE(RemoveStaleSocket(path).ok());
    EXPECT_FALSE(std::filesystem::exists(path));
  }
}

TEST_F(UnixListenerTest, LeavesAFileThatIsNotASocketAlone) {
  const std::string path = dir_ / "not-a-socket";
  std::ofstream(path) << "keep me";
  EXPECT_EQ(BindUnixSocket(path, SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kAlreadyExists);
  std::ifstream in(path);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "keep me");
}

TEST_F(UnixListenerTest, RefusesAPathTooLongOrEmpty) {
  EXPECT_EQ(BindUnixSocket(dir_ / std::string(200, 'x'), SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BindUnixSocket("", SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RemoveStaleSocket(dir_ / "nothing-here").ok());
}

// Only a directory no other user can change: one owned by another uid, or
// writable by others without the sticky bit, is refused before anything is
// bound there.
TEST_F(UnixListenerTest, RefusesADirectoryAnotherUserCouldChange) {
  const std::string theirs = dir_ / "theirs";
  ASSERT_EQ(::mkdir(theirs.c_str(), 0755), 0);
  if (::chown(theirs.c_str(), 65534, 65534) != 0) {
    GTEST_SKIP() << "cannot give a directory to another uid here: " << std::strerror(errno);
  }
  absl::StatusOr<BoundSocket> in_theirs = BindUnixSocket(theirs + "/s.sock", SOCK_STREAM, 0600);
  EXPECT_EQ(in_theirs.status().code(), absl::StatusCode::kFailedPrecondition) << in_theirs.status();
  EXPECT_FALSE(std::filesystem::exists(theirs + "/s.sock"));

  const std::string open_dir = dir_ / "open";
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  absl::StatusOr<BoundSocket> in_open = BindUnixSocket(open_dir + "/s.sock", SOCK_STREAM, 0600);
  EXPECT_EQ(in_open.status().code(), absl::StatusCode::kFailedPrecondition) << in_open.status();
  EXPECT_TRUE(absl::StrContains(in_open.status().message(), "0777")) << in_open.status();
  // Sticky (like /tmp): others cannot rename or remove what is ours there.
  ASSERT_EQ(::chmod(open_dir.c_str(), 01777), 0);
  absl::StatusOr<BoundSocket> sticky = BindUnixSocket(open_dir + "/s.sock", SOCK_STREAM, 0600);
  EXPECT_TRUE(sticky.ok()) << sticky.status();
}

// The path clients connect by must lead where hallocd bound for as long as
// it serves: a link another user made in a sticky directory (/tmp) to a
// root directory passed the directory's own check, hallocd bound there,
// and the user pointed the link at a directory of its own with its own
// socket in it (a review helper's attack: root's hallocctl reached it).
TEST_F(UnixListenerTest, RefusesAPathThroughALinkAnotherUserCouldRepoint) {
  const std::string sticky = dir_ / "sticky";
  ASSERT_EQ(::mkdir(sticky.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(sticky.c_str(), 01777), 0);
  const std::string root_dir = dir_ / "root-dir";
  ASSERT_EQ(::mkdir(root_dir.c_str(), 0755), 0);
  const std::string link = sticky + "/hsock";
  ASSERT_EQ(::symlink(root_dir.c_str(), link.c_str()), 0);
  if (::lchown(link.c_str(), 65534, 65534) != 0) {
    GTEST_SKIP() << "cannot give a link to another uid here: " << std::strerror(errno);
  }
  absl::StatusOr<BoundSocket> bound = BindUnixSocket(link + "/broker.sock", SOCK_STREAM, 0600);
  EXPECT_EQ(bound.status().code(), absl::StatusCode::kFailedPrecondition) << bound.status();
  EXPECT_TRUE(absl::StrContains(bound.status().message(), "belongs to uid 65534"))
      << bound.status();
  EXPECT_FALSE(std::filesystem::exists(root_dir + "/broker.sock"));
}

// What was bound is what is changed and removed, through the directory as
// it was when bound: a link in the path swapped since points elsewhere in
// vain.
TEST_F(UnixListenerTest, RemovesOnlyTheSocketItBound) {
  const std::string real = dir_ / "real", other = dir_ / "other", link = dir_ / "link";
  ASSERT_EQ(::mkdir(real.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
  ASSERT_EQ(::symlink(real.c_str(), link.c_str()), 0);
  absl::StatusOr<BoundSocket> bound = BindUnixSocket(link + "/s.sock", SOCK_STREAM, 0640);
  ASSERT_TRUE(bound.ok()) << bound.status();
  EXPECT_EQ(bound->file.path(), link + "/s.sock");
  struct stat st;
  ASSERT_EQ(::stat((real + "/s.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  // The link now leads to another directory holding a file of that name.
  std::ofstream(other + "/s.sock") << "not hallocd's";
  ASSERT_EQ(::unlink(link.c_str()), 0);
  ASSERT_EQ(::symlink(other.c_str(), link.c_str()), 0);
  bound->file.Remove();
  EXPECT_FALSE(std::filesystem::exists(real + "/s.sock")) << "the socket bound stays";
  EXPECT_TRUE(std::filesystem::exists(other + "/s.sock")) << "removed a file it never bound";
  // A socket put in place of the one bound is not the one bound either.
  absl::StatusOr<BoundSocket> again = BindUnixSocket(real + "/t.sock", SOCK_STREAM, 0600);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(::unlink((real + "/t.sock").c_str()), 0);
  absl::StatusOr<BoundSocket> replacement = BindUnixSocket(real + "/t.sock", SOCK_STREAM, 0600);
  ASSERT_TRUE(replacement.ok()) << replacement.status();
  again->file.Remove();
  EXPECT_TRUE(std::filesystem::exists(real + "/t.sock"));
  replacement->file.Remove();
  EXPECT_FALSE(std::filesystem::exists(real + "/t.sock"));
}

// Out of fds, the waiting client is shown the door rather than left
// hanging, accepting pauses, and the spare comes back.
TEST_F(UnixListenerTest, AnAcceptGuardClosesTheWaitingConnectionWhenOutOfFds) {
  const std::string path = dir_ / "s.sock";
  absl::StatusOr<BoundSocket> listener = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<AcceptGuard> guard = AcceptGuard::Create();
  ASSERT_TRUE(guard.ok()) << guard.status();
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  UniqueFd client(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)),
            0);
  const absl::Time now = MonotonicNow();
  EXPECT_FALSE(guard->OnAcceptError(listener->fd.get(), EAGAIN, now)) << "not out of fds";
  EXPECT_FALSE(guard->Paused(now));

  // No fd left below the limit but the spare.
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  const int lowest_free = ::dup(0);
  ::close(lowest_free);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  const int accepted = ::accept4(listener->fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
  const int err = errno;
  const bool paused = guard->OnAcceptError(listener->fd.get(), err, now);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_EQ(accepted, -1);
  EXPECT_EQ(err, EMFILE);
  EXPECT_TRUE(paused);

  pollfd p{client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  char byte;
  EXPECT_EQ(::recv(client.get(), &byte, 1, MSG_DONTWAIT), 0) << "the client sees the end";
  EXPECT_TRUE(guard->Paused(now + AcceptGuard::kPause / 2));
  EXPECT_FALSE(guard->Paused(now + AcceptGuard::kPause));
  EXPECT_TRUE(guard->has_spare());
}

}  // namespace
}  // namespace halloc
