// Faults and abuse against a real hallocd binary (issue #10): clients
// SIGKILLed at every step of the broker protocol, and clients that never
// read their broker socket (hallocd killed and restarted, and connection
// floods: fault_restart_test.cc).
//
// After each, hallocd's own fd count (/proc/<pid>/fd) and its live buffers
// and sessions (Stats) must come back to what they were before the test's
// action (measured after a warm-up), and hallocd must still serve a new
// client. Sessions end asynchronously, so every check polls with a bounded
// wait; every child, read and loop is bounded too, so nothing here can hang.
//
// Children forked from this process (which uses gRPC) speak the broker
// protocol themselves with raw sockets, or exec the peer binary: a forked
// child of a gRPC process must not use gRPC.
#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "tests/integration/fault_testing.h"
#include "tests/integration/hallocd_process.h"

namespace halloc {
namespace {

using testing::AllocateRequest;
using testing::FaultTest;
using testing::Hang;
using testing::RecvFrame;
using testing::Snapshot;
using testing::TestChild;
using testing::WriteAll;

// --- 1. A client SIGKILLed at each step of the protocol ----------------------

enum class Step {
  kConnected,       // before reading the Hello (hallocd has sent it)
  kHelloRead,       // before answering it
  kVerifySent,      // before reading the Welcome
  kAllocateSent,    // before reading the reply (the fd is queued to it)
  kHoldingBuffers,  // reply and fds received, buffers mapped and written
  kPipelining,      // 50 Allocates sent without reading, killed at once
};

std::string StepName(const ::testing::TestParamInfo<Step>& info) {
  switch (info.param) {
    case Step::kConnected: return "AfterConnect";
    case Step::kHelloRead: return "AfterReadingTheHello";
    case Step::kVerifySent: return "AfterVerify";
    case Step::kAllocateSent: return "AfterSendingAllocate";
    case Step::kHoldingBuffers: return "HoldingMappedBuffers";
    case Step::kPipelining: return "AmidPipelinedAllocates";
  }
  return "Unknown";
}

[[noreturn]] void Ready(int report) {
  WriteAll(report, "ready\n");
  Hang();
}

// Child "walk" (args: the step's number, the broker socket): walks the
// protocol up to the step, says "ready" and hangs.
int WalkTo(absl::Span<const std::string> args, int report) {
  int step_number = -1;
  if (args.size() != 2 || !absl::SimpleAtoi(args[0], &step_number)) return 2;
  const Step step = static_cast<Step>(step_number);
  const std::string& broker = args[1];
  auto fail = [report](const std::string& why) {
    WriteAll(report, "fail " + why + "\n");
    return 1;
  };
  absl::StatusOr<UniqueFd> sock = ConnectSeqpacket(broker);
  if (!sock.ok()) return fail(sock.status().ToString());
  const int fd = sock->get();
  if (step == Step::kConnected) {
    // Accepted (the Hello is queued), never read.
    if (!WaitReadable(fd, 5000).ok()) return fail("no hello");
    Ready(report);
  }
  absl::StatusOr<v1::BrokerFrame> hello = RecvFrame(fd, 5000);
  if (!hello.ok() || !hello->has_hello()) return fail("no hello");
  if (step == Step::kHelloRead) Ready(report);
  v1::BrokerRequest verify;
  verify.mutable_verify()->set_challenge(hello->hello().challenge());
  if (!SendRecord(fd, verify.SerializeAsString(), {}, false).ok()) return fail("verify");
  if (step == Step::kVerifySent) Ready(report);
  absl::StatusOr<v1::BrokerFrame> welcome = RecvFrame(fd, 5000);
  if (!welcome.ok() || !welcome->reply().has_welcome()) return fail("no welcome");
  switch (step) {
    case Step::kAllocateSent:
      if (!SendRecord(fd, AllocateRequest(1, 1 << 20).SerializeAsString(), {}, false).ok()) {
        return fail("send");
      }
      Ready(report);
    case Step::kHoldingBuffers: {
      if (!SendRecord(fd, AllocateRequest(1, 1 << 20, 4).SerializeAsString(), {}, false).ok()) {
        return fail("send");
      }
      std::vector<UniqueFd> fds;
      absl::StatusOr<v1::BrokerFrame> reply = RecvFrame(fd, 5000, &fds);
      if (!reply.ok() || reply->reply().code() != 0 || fds.size() != 4) {
        return fail("allocate reply");
      }
      for (const UniqueFd& b : fds) {
        void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, b.get(), 0);
        if (p == MAP_FAILED) return fail("mmap");
        memset(p, 0xa5, 1 << 20);
      }
      Ready(report);
    }
    case Step::kPipelining:
      for (int i = 0; i < 50; ++i) {
        if (!SendRecord(fd, AllocateRequest(i + 1, 1 << 16).SerializeAsString(), {}, false)
                 .ok()) {
          return fail("send");
        }
      }
      Ready(report);
    default:
      return fail("unreachable");
  }
}
HALLOC_TEST_CHILD("walk", WalkTo);

class KillAtStepTest : public FaultTest, public ::testing::WithParamInterface<Step> {};

TEST_P(KillAtStepTest, LeavesNoFdBufferOrSessionBehindAndTheDaemonServes) {
  const Step step = GetParam();
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const Snapshot base = WarmUp();
  absl::StatusOr<TestChild> child =
      TestChild::Spawn("walk", {absl::StrCat(static_cast<int>(step)), opts_.broker_socket});
  ASSERT_TRUE(child.ok()) << child.status();
  const std::optional<std::string> line = child->Line();
  ASSERT_EQ(line.value_or("(nothing)"), "ready");
  // The step took effect in hallocd before the kill (except mid-pipeline,
  // where the kill lands while hallocd works through the requests).
  switch (step) {
    case Step::kConnected:
    case Step::kHelloRead:
      EXPECT_TRUE(WaitUntil([&](const Snapshot& s) { return s.fds > base.fds; }));
      break;
    case Step::kVerifySent:
      EXPECT_TRUE(WaitUntil([&](const Snapshot& s) { return s.sessions == base.sessions + 1; }));
      break;
    case Step::kAllocateSent:
      EXPECT_TRUE(WaitUntil([&](const Snapshot& s) { return s.live == base.live + 1; }));
      break;
    case Step::kHoldingBuffers:
      EXPECT_EQ(Snap().live, base.live + 4);
      break;
    case Step::kPipelining:
      break;
  }
  child->Kill();
  EXPECT_EQ(WaitFor(base), base) << "hallocd kept what the killed client had; log:\n" << Log();
  EXPECT_TRUE(ServeOneClient().ok());
  EXPECT_EQ(WaitFor(base), base);
}

INSTANTIATE_TEST_SUITE_P(EveryStep, KillAtStepTest,
                         ::testing::Values(Step::kConnected, Step::kHelloRead,
                                           Step::kVerifySent, Step::kAllocateSent,
                                           Step::kHoldingBuffers, Step::kPipelining),
                         StepName);

// --- 2. A client that never reads its broker socket --------------------------

int CountLines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// Child "non-reader" (args: the broker socket): allocates 64 KiB buffers
// as fast as it can and never reads a reply, until its own sends block
// (hallocd stopped taking requests) or 20000.
int NonReader(absl::Span<const std::string> args, int report) {
  if (args.size() != 1) return 2;
  absl::StatusOr<BrokerConnection> c = ConnectBroker(args[0], absl::Seconds(5));
  if (!c.ok()) {
    WriteAll(report, "fail " + c.status().ToString() + "\n");
    return 1;
  }
  WriteAll(report, "verified\n");
  const int fd = c->fd.get();
  int sent = 0, full = 0;
  std::string stop = "limit";
  const absl::Time deadline = absl::Now() + absl::Seconds(8);
  while (sent < 20000) {
    if (absl::Now() > deadline) {
      stop = "time";
      break;
    }
    absl::Status s =
        SendRecord(fd, AllocateRequest(sent + 1, 64 << 10).SerializeAsString(), {}, true);
    if (s.ok()) {
      ++sent;
      continue;
    }
    if (!absl::IsResourceExhausted(s)) {
      stop = s.ToString();
      break;
    }
    ++full;
    pollfd pfd{fd, POLLOUT, 0};
    if (poll(&pfd, 1, 500) <= 0) {
      stop = "blocked";
      break;
    }
  }
  WriteAll(report, absl::StrCat("done ", sent, " ", full, " ", stop, "\n"));
  Hang();
}
HALLOC_TEST_CHILD("non-reader", NonReader);

TEST_F(FaultTest, AClientThatNeverReadsNeitherBlocksOthersNorKeepsBuffers) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const Snapshot base = WarmUp();
  const std::string fds_before = daemon_->FdTable();
  const size_t log_before = Log().size();
  absl::StatusOr<TestChild> flood = TestChild::Spawn("non-reader", {opts_.broker_socket});
  ASSERT_TRUE(flood.ok()) << flood.status();
  ASSERT_EQ(flood->Line().value_or("(nothing)"), "verified");
  const absl::Time flood_start = absl::Now();
  // Meanwhile a normal client allocates and releases, each call promptly.
  absl::StatusOr<Client> normal = Client::Connect(opts_);
  ASSERT_TRUE(normal.ok()) << normal.status();
  int calls = 0;
  absl::Duration slowest;
  std::optional<std::string> done;
  const absl::Time until = absl::Now() + absl::Seconds(15);
  while (!done && absl::Now() < until) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<Buffer> b = normal->Allocate(BlobDescriptor(64 << 10));
    ASSERT_TRUE(b.ok()) << b.status();
    const absl::Time t1 = absl::Now();
    const absl::Status released = normal->Release(b->id());
    ASSERT_TRUE(released.ok()) << released;
    slowest = std::max({slowest, t1 - t0, absl::Now() - t1});
    ++calls;
    done = flood->Line(absl::ZeroDuration());
  }
  ASSERT_TRUE(done.has_value()) << "the non-reader did not finish";
  EXPECT_LT(slowest, absl::Seconds(10)) << "over " << calls << " calls";
  std::vector<std::string> f = absl::StrSplit(*done, ' ');
  ASSERT_EQ(f.size(), 4u) << *done;
  int sent = 0;
  ASSERT_TRUE(absl::SimpleAtoi(f[1], &sent));
  // hallocd keeps serving while the non-reader sits on a full queue.
  for (int i = 0; i < 10; ++i) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<Buffer> b = normal->Allocate(BlobDescriptor(64 << 10));
    ASSERT_TRUE(b.ok()) << b.status();
    const absl::Status released = normal->Release(b->id());
    ASSERT_TRUE(released.ok()) << released;
    EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  }
  // It holds only what fits in the non-reader's socket queue (a few hundred
  // replies with their fds), not every buffer it asked for.
  const Snapshot during = Snap();
  EXPECT_LE(during.live - base.live, 2048u) << "sent " << sent << ": " << *done;
  normal = absl::UnavailableError("closed");
  flood->Kill();
  EXPECT_EQ(WaitFor(base), base) << "after " << *done << "; fds before:\n"
                                 << fds_before << "fds now:\n"
                                 << daemon_->FdTable() << "log:\n"
                                 << Log().substr(log_before);
  const absl::Duration flood_time = absl::Now() - flood_start;
  const std::string log = Log().substr(log_before);
  const int lines = CountLines(log);
  // Rate-limited: a few dozen lines a second (two kinds here: the denied
  // Allocate and the reply that could not be sent), never one per request.
  const int seconds = static_cast<int>(absl::ToInt64Seconds(flood_time)) + 2;
  EXPECT_LE(lines, 40 * seconds) << "sent " << sent << " in " << flood_time << "; log:\n"
                                 << log;
  EXPECT_TRUE(ServeOneClient().ok());
  std::cerr << "non-reader: " << *done << "; " << calls << " normal calls, slowest "
            << slowest << "; held " << during.live - base.live << " while it lived; "
            << lines << " log lines in " << flood_time << "\n";
}

}  // namespace
}  // namespace halloc
