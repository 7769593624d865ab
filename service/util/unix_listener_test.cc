#include "service/util/unix_listener.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "clients/cpp/halloc/base/unix_address.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

class UnixListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-listener-XXXXXX";  // short: sun_path is 108 bytes
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Whether a client of `type` can connect to `path`.
  static bool Connects(const std::string& path, int type) {
    absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    return addr.ok() && fd &&
           ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) == 0;
  }

  std::string dir_;
};

TEST_F(UnixListenerTest, ListensWithTheModeGiven) {
  const std::string path = dir_ + "/s.sock";
  absl::StatusOr<UniqueFd> fd = BindUnixSocket(path, SOCK_SEQPACKET, 0640);
  ASSERT_TRUE(fd.ok()) << fd.status();
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_TRUE(Connects(path, SOCK_SEQPACKET));
}

TEST_F(UnixListenerTest, ReplacesAStaleSocketFile) {
  const std::string path = dir_ + "/s.sock";
  { ASSERT_TRUE(BindUnixSocket(path, SOCK_STREAM, 0600).ok()); }  // closed: stale now
  ASSERT_TRUE(std::filesystem::exists(path));
  ASSERT_FALSE(Connects(path, SOCK_STREAM));
  absl::StatusOr<UniqueFd> again = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(Connects(path, SOCK_SEQPACKET));
}

TEST_F(UnixListenerTest, NeverTakesOverALiveServersPath) {
  const std::string path = dir_ + "/s.sock";
  for (int live_type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    absl::StatusOr<UniqueFd> live = BindUnixSocket(path, live_type, 0600);
    ASSERT_TRUE(live.ok()) << live.status();
    absl::StatusOr<UniqueFd> second = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
    EXPECT_EQ(RemoveStaleSocket(path).code(), absl::StatusCode::kAlreadyExists);
    EXPECT_TRUE(Connects(path, live_type));  // the live one still serves
    live->reset();
    ASSERT_TRUE(RemoveStaleSocket(path).ok());
    EXPECT_FALSE(std::filesystem::exists(path));
  }
}

TEST_F(UnixListenerTest, LeavesAFileThatIsNotASocketAlone) {
  const std::string path = dir_ + "/not-a-socket";
  std::ofstream(path) << "keep me";
  EXPECT_EQ(BindUnixSocket(path, SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kAlreadyExists);
  std::ifstream in(path);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "keep me");
}

TEST_F(UnixListenerTest, RefusesAPathTooLongOrEmpty) {
  EXPECT_EQ(BindUnixSocket(dir_ + "/" + std::string(200, 'x'), SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BindUnixSocket("", SOCK_STREAM, 0600).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RemoveStaleSocket(dir_ + "/nothing-here").ok());
}

// Out of fds, the waiting client is shown the door rather than left
// hanging, accepting pauses, and the spare comes back.
TEST_F(UnixListenerTest, AnAcceptGuardClosesTheWaitingConnectionWhenOutOfFds) {
  const std::string path = dir_ + "/s.sock";
  absl::StatusOr<UniqueFd> listener = BindUnixSocket(path, SOCK_SEQPACKET, 0600);
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<AcceptGuard> guard = AcceptGuard::Create();
  ASSERT_TRUE(guard.ok()) << guard.status();
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  UniqueFd client(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)),
            0);
  const absl::Time now = MonotonicNow();
  EXPECT_FALSE(guard->OnAcceptError(listener->get(), EAGAIN, now)) << "not out of fds";
  EXPECT_FALSE(guard->Paused(now));

  // No fd left below the limit but the spare.
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  const int lowest_free = ::dup(0);
  ::close(lowest_free);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  const int accepted = ::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC);
  const int err = errno;
  const bool paused = guard->OnAcceptError(listener->get(), err, now);
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
