// Load: 64 clients × 10 000 allocate → map → write → release against a real
// hallocd, with the daemon's fds, threads and RSS sampled before, during and
// after. Nothing may grow for good: after the run the fds and live buffers
// are back at baseline, threads within a few of it, RSS within a bound.
//
// HALLOC_LOAD_CLIENTS / HALLOC_LOAD_ITERATIONS override the 64 × 10 000.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = getenv(name);
  int n;
  return v != nullptr && absl::SimpleAtoi(v, &n) && n > 0 ? n : fallback;
}

struct Sample {
  int fds = 0;
  int threads = 0;
  long rss_kib = 0;
};

Sample Measure(pid_t pid) {
  Sample s;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++s.fds;
  }
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "Threads:")) s.threads = std::stoi(line.substr(8));
    if (absl::StartsWith(line, "VmRSS:")) s.rss_kib = std::stol(line.substr(6));
  }
  return s;
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-load-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    opts_.control_socket = dir_ + "/control.sock";
    opts_.broker_socket = dir_ + "/broker.sock";
    pid_ = fork();
    if (pid_ == 0) {
      const int log = open((dir_ + "/hallocd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(log, 2);
      const std::string hallocd = absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/service/hallocd");
      const std::string c = "--control_socket=" + opts_.control_socket;
      const std::string b = "--broker_socket=" + opts_.broker_socket;
      // The unpooled backend: every fd hallocd holds after the run is a
      // leak (the pool's stock, by design, would hold some for 10 s).
      execl(hallocd.c_str(), "hallocd", c.c_str(), b.c_str(), "--backend=memfd", nullptr);
      _exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      if (ConnectSeqpacket(opts_.broker_socket).ok()) return;
      absl::SleepFor(absl::Milliseconds(10));
    }
    FAIL() << "hallocd did not start";
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  ConnectOptions opts_;
  pid_t pid_ = -1;
};

TEST_F(LoadTest, ManyClientsLeaveNothingBehind) {
  const int clients = EnvInt("HALLOC_LOAD_CLIENTS", 64);
  const int iterations = EnvInt("HALLOC_LOAD_ITERATIONS", 10000);
  // Baseline after a warm-up round (gRPC's threads, the reaper's).
  {
    absl::StatusOr<Client> c = Client::Connect(opts_);
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 50; ++i) {
      absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(4096, 0, "load"));
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE(c->Release(b->id()).ok());
    }
    ASSERT_TRUE(c->Stats().ok());
  }
  absl::SleepFor(absl::Milliseconds(300));
  const Sample base = Measure(pid_);

  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  absl::Mutex mu;
  Sample peak = base;
  std::thread sampler([&] {
    while (!done.load()) {
      const Sample s = Measure(pid_);
      {
        absl::MutexLock lock(&mu);
        peak.fds = std::max(peak.fds, s.fds);
        peak.threads = std::max(peak.threads, s.threads);
        peak.rss_kib = std::max(peak.rss_kib, s.rss_kib);
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  const absl::Time t0 = absl::Now();
  std::vector<std::thread> workers;
  for (int w = 0; w < clients; ++w) {
    workers.emplace_back([&, w] {
      absl::StatusOr<Client> c = Client::Connect(opts_);
      if (!c.ok()) {
        ++failures;
        return;
      }
      // Sizes vary per client: 4 KiB to 64 KiB.
      const uint64_t size = uint64_t{4096} << (w % 5);
      for (int i = 0; i < iterations && failures.load() < 10; ++i) {
        absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(size, 0, "load"));
        if (!b.ok()) {
          ADD_FAILURE() << "client " << w << " Allocate: " << b.status();
          ++failures;
          continue;
        }
        absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite);
        if (!m.ok()) {
          ADD_FAILURE() << "client " << w << " Map: " << m.status();
          ++failures;
        } else {
          m->as<char>()[0] = static_cast<char>(i);
        }
        if (absl::Status s = c->Release(b->id()); !s.ok()) {
          ADD_FAILURE() << "client " << w << " Release: " << s;
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  done = true;
  sampler.join();
  EXPECT_EQ(failures.load(), 0);

  // Sessions end asynchronously; the reaper frees off the request path.
  absl::StatusOr<Client> admin = Client::Connect(opts_);
  ASSERT_TRUE(admin.ok());
  uint64_t live = ~0u, sessions = ~0u;
  for (int i = 0; i < 500 && (live != 0 || sessions != 1); ++i) {
    absl::StatusOr<v1::StatsResponse> s = admin->Stats();
    ASSERT_TRUE(s.ok());
    live = s->live_buffers();
    sessions = s->sessions();
    if (live != 0 || sessions != 1) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(live, 0u);
  EXPECT_EQ(sessions, 1u);  // the admin's own
  admin = absl::CancelledError("closed");  // measure as at baseline: no client
  absl::SleepFor(absl::Milliseconds(500));
  const Sample after = Measure(pid_);
  const double ops = static_cast<double>(clients) * iterations;
  printf("load: %d clients x %d iterations = %.0f allocate/map/release in %.1f s "
         "(%.0f/s)\n",
         clients, iterations, ops, seconds, ops / seconds);
  printf("load: hallocd fds %d → peak %d → %d, threads %d → %d → %d, "
         "RSS %ld → %ld → %ld KiB\n",
         base.fds, peak.fds, after.fds, base.threads, peak.threads, after.threads,
         base.rss_kib, peak.rss_kib, after.rss_kib);
  RecordProperty("ops_per_second", static_cast<int>(ops / seconds));
  RecordProperty("rss_growth_kib", static_cast<int>(after.rss_kib - base.rss_kib));
  EXPECT_EQ(after.fds, base.fds) << "fds leaked";
  EXPECT_LE(after.threads, base.threads + 4) << "threads left behind";
  // Allocator hash maps keep their capacity and malloc keeps freed arenas;
  // growth bounded by 16 MiB, not by the 640 000 buffers that passed.
  EXPECT_LE(after.rss_kib, base.rss_kib + 16 * 1024) << "RSS grew";
}

}  // namespace
}  // namespace halloc
