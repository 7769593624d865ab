#include "clients/cpp/halloc/base/scm.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "clients/cpp/halloc/base/open_fds.h"
#include "clients/cpp/halloc/base/scm_testing.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using testing::CountOpenFds;

class ScmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    a_.reset(sv[0]);
    b_.reset(sv[1]);
  }
  UniqueFd a_, b_;
};

TEST_F(ScmTest, BytesAndFdsArriveTogetherCloexec) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  const int fds[] = {r.get(), w.get()};
  ASSERT_TRUE(SendRecord(a_.get(), "hello", fds, false).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->bytes, "hello");
  ASSERT_EQ(rec->fds.size(), 2u);
  struct stat s1, s2;
  ASSERT_EQ(::fstat(rec->fds[0].get(), &s1), 0);
  ASSERT_EQ(::fstat(r.get(), &s2), 0);
  EXPECT_EQ(s1.st_ino, s2.st_ino);
  EXPECT_TRUE(::fcntl(rec->fds[0].get(), F_GETFD) & FD_CLOEXEC);
}

TEST_F(ScmTest, RecordBoundariesArePreserved) {
  ASSERT_TRUE(SendRecord(a_.get(), "one", {}, false).ok());
  ASSERT_TRUE(SendRecord(a_.get(), "two", {}, false).ok());
  EXPECT_EQ(ReceiveRecord(b_.get(), false)->bytes, "one");
  EXPECT_EQ(ReceiveRecord(b_.get(), false)->bytes, "two");
}

TEST_F(ScmTest, PeerClosedIsUnavailable) {
  a_.reset();
  EXPECT_EQ(ReceiveRecord(b_.get(), false).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(ScmTest, SendToClosedPeerFailsWithoutSigpipe) {
  b_.reset();
  absl::Status s = SendRecord(a_.get(), "x", {}, false);
  EXPECT_FALSE(s.ok());
}

TEST_F(ScmTest, NonblockingEmptyIsResourceExhausted) {
  EXPECT_EQ(ReceiveRecord(b_.get(), true).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(WaitReadable(b_.get(), 10).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ScmTest, TooManyFdsRefusedBeforeSending) {
  std::vector<int> fds(kMaxFdsPerRecord + 1, 0);
  EXPECT_EQ(SendRecord(a_.get(), "x", fds, false).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ScmTest, TruncatedControlClosesFdsAndReportsDataLoss) {
  // Send more fds than the receiver's buffer holds, with raw sendmsg (the
  // kernel allows up to SCM_MAX_FD = 253 in one message).
  const int before = CountOpenFds();
  std::vector<int> fds(kMaxFdsPerRecord + 8);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  for (int& fd : fds) fd = r.get();
  ASSERT_EQ(SendRaw(a_.get(), "x", fds), 1);
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false);
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CountOpenFds(), before + 2);  // only the pipe we made
}

TEST_F(ScmTest, FdsCutByTheKernelLeaveTheBytesInTheStatus) {
  // A receiver at its RLIMIT_NOFILE gets MSG_CTRUNC: the fds are lost but
  // the bytes say what they were, so it can give them back.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  ASSERT_TRUE(SendRecord(a_.get(), "buffers 7 8", {r.get(), w.get()}, false).ok());
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  const int before = CountOpenFds();
  // Room for no new fd at all: the lowest free number is over the limit.
  const int lowest_free = ::dup(0);
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  rlimit tight = old;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_EQ(rec.status().code(), absl::StatusCode::kDataLoss) << rec.status();
  absl::optional<absl::Cord> bytes = rec.status().GetPayload(kTruncatedRecordPayload);
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(std::string(*bytes), "buffers 7 8");
  EXPECT_EQ(CountOpenFds(), before);
}

// More fds than the receiver made room for, which the kernel's spare room
// still held: the same, the fds closed and the bytes in the status (a
// client waiting for that reply fails at once, not at its deadline).
TEST_F(ScmTest, MoreFdsThanAskedForLeaveTheBytesInTheStatus) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  const int before = CountOpenFds();
  ASSERT_TRUE(SendRecord(a_.get(), "buffers 7 8", {r.get(), w.get()}, false).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false, /*max_fds=*/1);
  ASSERT_EQ(rec.status().code(), absl::StatusCode::kDataLoss) << rec.status();
  absl::optional<absl::Cord> bytes = rec.status().GetPayload(kTruncatedRecordPayload);
  ASSERT_TRUE(bytes.has_value()) << rec.status();
  EXPECT_EQ(std::string(*bytes), "buffers 7 8");
  EXPECT_EQ(CountOpenFds(), before);
}

TEST_F(ScmTest, KernelStampsTheSenderWhenAsked) {
  int on = 1;
  ASSERT_EQ(setsockopt(b_.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  ASSERT_TRUE(SendRecord(a_.get(), "hi", {}, false).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  ASSERT_TRUE(rec->creds.has_value());
  EXPECT_EQ(rec->creds->pid, getpid());
  EXPECT_EQ(rec->creds->uid, getuid());
  // Without SO_PASSCRED, no stamp.
  ASSERT_TRUE(SendRecord(b_.get(), "hi", {}, false).ok());
  rec = ReceiveRecord(a_.get(), false);
  ASSERT_TRUE(rec.ok());
  EXPECT_FALSE(rec->creds.has_value());
}

// A receiver that takes no fds never installs them: the kernel drops them.
// Seen through a POSIX lock, which close() of any fd of the file drops for
// the whole process while a kernel-side drop does not (and which stands in
// for a flush at close: a FUSE file's would wait for its server).
TEST_F(ScmTest, NoRoomForFdsMeansTheyAreNeverInstalled) {
  LockedFile locked = LockTempFile();
  ASSERT_FALSE(locked.path.empty());
  const UniqueFd& file = locked.fd;
  const std::string& path = locked.path;
  ASSERT_TRUE(OthersSeeOurLock(path));

  // As on the broker: the credentials take the room an fd would need.
  const int on = 1;
  ASSERT_EQ(::setsockopt(b_.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  const int fds[] = {file.get()};
  ASSERT_TRUE(SendRecord(a_.get(), "x", fds, false).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false, /*max_fds=*/0);
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss) << rec.status();
  EXPECT_TRUE(OthersSeeOurLock(path)) << "an fd was installed here and closed";

  // The premise: an installed fd, once closed, drops the lock.
  ASSERT_TRUE(SendRecord(a_.get(), "x", fds, false).ok());
  rec = ReceiveRecord(b_.get(), false);
  ASSERT_TRUE(rec.ok()) << rec.status();
  ASSERT_EQ(rec->fds.size(), 1u);
  rec->fds.clear();
  EXPECT_FALSE(OthersSeeOurLock(path));
  ::unlink(path.c_str());
}

// A raw receive makes room for every fd a record can carry (the kernel
// drops those that find none, running a last reference's release on the
// receiving thread), and hands them over even when the bytes were cut.
TEST_F(ScmTest, RawReceiveTakesEveryFdARecordCanCarry) {
  const int on = 1;
  ASSERT_EQ(::setsockopt(b_.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd r(p[0]), w(p[1]);
  std::vector<int> fds(kKernelMaxFdsPerRecord, w.get());
  const std::string bytes(kMaxRecordBytes + 100, 'x');
  ASSERT_EQ(SendRaw(a_.get(), bytes, fds), static_cast<ssize_t>(bytes.size()));
  w.reset();

  absl::StatusOr<RawRecord> raw = ReceiveRawRecord(b_.get(), false);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_TRUE(raw->bytes_cut);
  EXPECT_FALSE(raw->fds_cut);
  EXPECT_EQ(raw->record.fds.size(), kKernelMaxFdsPerRecord);
  EXPECT_EQ(raw->record.bytes.size(), kMaxRecordBytes);
  ASSERT_TRUE(raw->record.creds.has_value());
  char c;
  EXPECT_EQ(::read(r.get(), &c, 1), -1) << "write ends still held";
  raw->record.fds.clear();
  EXPECT_EQ(::read(r.get(), &c, 1), 0);

  // Peer closed: UNAVAILABLE, as ReceiveRecord says it.
  a_.reset();
  EXPECT_EQ(ReceiveRawRecord(b_.get(), true).status().code(), absl::StatusCode::kUnavailable);
}

// The one recvmsg beneath the rest: a part of a stream's bytes keeps every
// fd that came with it; with SO_PASSCRED, a peek with no room for fds
// installs none and says they were cut (without, the credentials' room holds
// a few); nothing queued is -EAGAIN.
TEST(ReceiveMessageTest, PartsPeeksAndErrnos) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  char buf[4];
  Ancillary none;
  EXPECT_EQ(ReceiveMessage(b.get(), absl::MakeSpan(buf), MSG_DONTWAIT, kKernelMaxFdsPerRecord,
                           none),
            -EAGAIN);
  EXPECT_TRUE(none.fds.empty());

  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd r(p[0]), w(p[1]);
  const std::vector<int> fds(100, w.get());
  ASSERT_EQ(SendRaw(a.get(), "0123456789", fds), 10);
  w.reset();

  Ancillary without_creds;
  EXPECT_EQ(ReceiveMessage(b.get(), {}, MSG_PEEK | MSG_DONTWAIT, 0, without_creds), 0);
  EXPECT_GT(without_creds.fds.size(), 0u) << "the credentials' room, unused, held fds";
  EXPECT_TRUE(without_creds.fds_cut);
  without_creds.fds.clear();
  const int on = 1;
  ASSERT_EQ(::setsockopt(b.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  Ancillary peeked;
  EXPECT_EQ(ReceiveMessage(b.get(), {}, MSG_PEEK | MSG_DONTWAIT, 0, peeked), 0);
  EXPECT_TRUE(peeked.fds.empty());
  EXPECT_TRUE(peeked.fds_cut);
  EXPECT_TRUE(peeked.creds.has_value());

  Ancillary got;
  ASSERT_EQ(ReceiveMessage(b.get(), absl::MakeSpan(buf), 0, kKernelMaxFdsPerRecord, got), 4);
  EXPECT_EQ(std::string(buf, 4), "0123");
  EXPECT_EQ(got.fds.size(), fds.size());
  EXPECT_FALSE(got.fds_cut);
  EXPECT_TRUE(got.creds.has_value()) << "written (pid 0: the bytes came before SO_PASSCRED)";
  for (const UniqueFd& fd : got.fds) EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
  char c;
  EXPECT_EQ(::read(r.get(), &c, 1), -1) << "write ends held by what arrived";
  got.fds.clear();
  EXPECT_EQ(::read(r.get(), &c, 1), 0) << "the last write end went with `got`";

  Ancillary rest;
  EXPECT_EQ(ReceiveMessage(b.get(), absl::MakeSpan(buf), 0, 0, rest), 4);
  EXPECT_TRUE(rest.fds.empty()) << "the fds came once, with the first part";
  EXPECT_EQ(::close(b.release()), 0);
  Ancillary bad;
  EXPECT_EQ(ReceiveMessage(b.get(), absl::MakeSpan(buf), 0, 0, bad), -EBADF);
}

// The end of a stream reads as the end even with SO_PASSCRED, where the
// kernel writes credentials at the end too; an empty record on a
// SOCK_SEQPACKET socket with SO_PASSCRED is a record.
TEST(ScmEndTest, TheEndIsTheEndWithCredentialsOnAndAnEmptyRecordIsNot) {
  const int on = 1;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  ASSERT_EQ(::setsockopt(b.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  ASSERT_EQ(::write(a.get(), "x", 1), 1);
  a.reset();
  absl::StatusOr<RawRecord> first = ReceiveRawRecord(b.get(), true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->record.bytes, "x");
  EXPECT_EQ(ReceiveRawRecord(b.get(), true).status().code(), absl::StatusCode::kUnavailable);

  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd c(sv[0]), d(sv[1]);
  ASSERT_EQ(::setsockopt(d.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  ASSERT_TRUE(SendRecord(c.get(), "", {}, false).ok());
  c.reset();
  absl::StatusOr<RawRecord> empty = ReceiveRawRecord(d.get(), true);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->record.bytes.empty());
  EXPECT_TRUE(empty->record.creds.has_value());
  EXPECT_EQ(ReceiveRawRecord(d.get(), true).status().code(), absl::StatusCode::kUnavailable);
}

// Where the kernel has SO_PASSRIGHTS, a record with fds is refused at the
// sender; records without fds still pass.
TEST_F(ScmTest, RefusedFdsFailAtTheSender) {
  absl::Status s = RefuseIncomingFds(b_.get());
  if (absl::IsUnimplemented(s)) GTEST_SKIP() << s.message();
  ASSERT_TRUE(s.ok()) << s;
  const int fds[] = {a_.get()};
  EXPECT_EQ(SendRecord(a_.get(), "x", fds, false).code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(SendRecord(a_.get(), "y", {}, false).ok());
  absl::StatusOr<Record> rec = ReceiveRecord(b_.get(), false, 0);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->bytes, "y");
}

}  // namespace
}  // namespace halloc
