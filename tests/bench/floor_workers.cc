// The floors the benchmark judges halloc against: a gRPC echo server and
// client, a Unix-socket round trip carrying an fd (scm_fd), and a fresh
// memfd's cost.
#include "tests/bench/floor_workers.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "echo.grpc.pb.h"
#include "service/util/cpu_follower.h"
#include "tests/bench/bench_util.h"

namespace halloc::bench {

using Micros = std::vector<double>;


namespace {

class EchoService final : public halloc::bench::Echo::Service {
  grpc::Status Echo(grpc::ServerContext*, const EchoRequest*,
                    EchoResponse*) override {
    return grpc::Status::OK;
  }
};

// The same sync server setup as hallocd's (daemon.cc): default builder.

}  // namespace

int EchoServer(const Args& a) {
  EchoService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + a.Str("socket"),
                           grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return Fail("echo server", absl::UnavailableError("listen"));
  Say("ready\n");
  WaitForDriver();
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}

// Answers each one-byte request on a SOCK_SEQPACKET connection with one fd
// (SCM_RIGHTS), through the same SendRecord the broker uses.
int ScmServer(const Args& a) {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(a.Str("socket"));
  if (!addr.ok()) return Fail("scm server", addr.status());
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!listener ||
      ::bind(listener.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
      ::listen(listener.get(), 64) != 0) {
    return Fail("scm server", ErrnoStatus(errno, "bind/listen"));
  }
  UniqueFd memfd(::memfd_create("bench-scm", MFD_CLOEXEC));
  if (!memfd || ::ftruncate(memfd.get(), 4096) != 0) {
    return Fail("scm server", ErrnoStatus(errno, "memfd"));
  }
  std::thread([&] {
    for (;;) {
      UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn) continue;
      std::thread([conn = std::move(conn), fd = memfd.get()] {
        // Each connection's thread replies from its client's CPU, as
        // hallocd's broker does (cpu_follower.h): the floor is the best
        // round trip this machine allows, not wherever the scheduler last
        // left the two threads.
        CpuFollower follower = CpuFollower::ForThisThread();
        uint32_t cpu_hint = 0;
        const int fds[] = {fd};
        for (;;) {
          const ssize_t n = ::recv(conn.get(), &cpu_hint, sizeof(cpu_hint), 0);
          if (n <= 0) break;
          follower.Follow(n == sizeof(cpu_hint) ? cpu_hint : 0, /*alone=*/true);
          if (!SendRecord(conn.get(), "x", fds, false).ok()) break;
        }
      }).detach();
    }
  }).detach();
  Say("ready\n");
  WaitForDriver();
  std::fflush(stdout);
  ::_exit(0);  // the accept thread and connection threads never return
}

int EchoLatency(const Args& a) {
  auto stub = halloc::bench::Echo::NewStub(grpc::CreateChannel(
      "unix:" + a.Str("socket"), grpc::InsecureChannelCredentials()));
  const int64_t n = a.Int("n", 1000);
  Micros us;
  us.reserve(n);
  for (int64_t i = -a.Int("warmup", 100); i < n; ++i) {
    const int64_t t0 = NowNs();
    grpc::ClientContext ctx;
    // Diagnostics only (the floor uses neither): what libhalloc adds per call.
    if (a.Has("deadline")) {
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    }
    if (a.Has("metadata")) ctx.AddMetadata("halloc-session", std::string(32, 'a'));
    EchoResponse resp;
    grpc::Status s = stub->Echo(&ctx, EchoRequest(), &resp);
    const int64_t t1 = NowNs();
    if (!s.ok()) return Fail("echo", absl::UnavailableError(s.error_message()));
    if (i >= 0) us.push_back(Us(t0, t1));
  }
  Say(FormatSummary("echo", Summarize(us)));
  return 0;
}

// One scm_fd request: the CPU the client sends from, plus one (0: unknown),
// like BrokerRequest.cpu. true once sent.
bool SendScmRequest(int sock) {
  const uint32_t hint = CurrentCpuHint();
  return ::send(sock, &hint, sizeof(hint), MSG_NOSIGNAL) == sizeof(hint);
}

int ScmLatency(const Args& a) {
  absl::StatusOr<UniqueFd> connected = ConnectSeqpacket(a.Str("socket"));
  if (!connected.ok()) return Fail("scm", connected.status());
  UniqueFd sock = *std::move(connected);
  const int64_t n = a.Int("n", 1000);
  Micros us;
  us.reserve(n);
  for (int64_t i = -a.Int("warmup", 100); i < n; ++i) {
    const int64_t t0 = NowNs();
    if (!SendScmRequest(sock.get())) {
      return Fail("scm", ErrnoStatus(errno, "send"));
    }
    absl::StatusOr<Record> rec = ReceiveRecord(sock.get(), false);
    const int64_t t1 = NowNs();
    if (!rec.ok() || rec->fds.size() != 1) return Fail("scm", rec.status());
    if (i >= 0) us.push_back(Us(t0, t1));
  }
  Say(FormatSummary("scm", Summarize(us)));
  return 0;
}

// The cost of the memory itself: a fresh memfd, sized, committed (fallocate
// zeroes every page) and mapped. Freed outside the timed region.
int MemfdFloor(const Args& a) {
  const uint64_t size = a.Int("size");
  const int64_t n = a.Int("n", 100);
  Micros us;
  for (int64_t i = -a.Int("warmup", 3); i < n; ++i) {
    const int64_t t0 = NowNs();
    UniqueFd fd(::memfd_create("bench-floor", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd || ::ftruncate(fd.get(), size) != 0 ||
        ::fallocate(fd.get(), 0, 0, size) != 0) {
      return Fail("memfd floor", ErrnoStatus(errno, "memfd/ftruncate/fallocate"));
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    const int64_t t1 = NowNs();
    if (p == MAP_FAILED) return Fail("memfd floor", ErrnoStatus(errno, "mmap"));
    ::munmap(p, size);
    if (i >= 0) us.push_back(Us(t0, t1));
  }
  Say(FormatSummary("memfd", Summarize(us)));
  return 0;
}

}  // namespace halloc::bench
