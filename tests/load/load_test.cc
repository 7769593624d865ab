// Load: 64 clients × 4 000 allocate → map → write → release against a real
// hallocd, with the daemon's fds, threads and RSS sampled before, during and
// after. Nothing may grow for good: after the run the fds and live buffers
// are back at baseline, threads within a few of it, RSS within a bound.
//
// HALLOC_LOAD_CLIENTS / HALLOC_LOAD_ITERATIONS override the 64 × 4 000
// (256 000 buffers, ~65 s on 2 cores; 10 000 took ~165 s of the suite).
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "tests/integration/hallocd_process.h"

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

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The unpooled backend: every fd hallocd holds after the run is a leak
    // (the pool's stock, by design, would hold some for 10 s).
    absl::StatusOr<std::unique_ptr<testing::HallocdProcess>> d =
        testing::HallocdProcess::Start(dir_.path(), {"", 0, {"--backend=memfd"}});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    opts_ = daemon_->connect_options();
  }
  void TearDown() override { daemon_.reset(); }
  Sample Measure() const { return {daemon_->Fds(), daemon_->Threads(), daemon_->RssKib()}; }
  // A sample once hallocd's fd count has held still for 300 ms (a session
  // that just ended may still be closing on a starved machine), 10 s at most.
  Sample Settled() const {
    Sample s = Measure();
    const absl::Time until = absl::Now() + absl::Seconds(10);
    for (int still = 0; still < 3 && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(100));
      const Sample next = Measure();
      still = next.fds == s.fds ? still + 1 : 0;
      s = next;
    }
    return s;
  }
  // The first sample with at most `fds` fds, or the last within 30 s.
  Sample DownTo(int fds) const {
    Sample s = Measure();
    const absl::Time until = absl::Now() + absl::Seconds(30);
    while (s.fds > fds && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(50));
      s = Measure();
    }
    return s;
  }

  testing::TempDir dir_{"load"};
  ConnectOptions opts_;
  std::unique_ptr<testing::HallocdProcess> daemon_;
};

TEST_F(LoadTest, ManyClientsLeaveNothingBehind) {
  const int clients = EnvInt("HALLOC_LOAD_CLIENTS", 64);
  const int iterations = EnvInt("HALLOC_LOAD_ITERATIONS", 4000);
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
  const Sample base = Settled();

  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  absl::Mutex mu;
  Sample peak = base;
  std::thread sampler([&] {
    while (!done.load()) {
      const Sample s = Measure();
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
  absl::SleepFor(absl::Milliseconds(500));  // threads wind down too
  const Sample after = DownTo(base.fds);
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
  // growth bounded by 16 MiB, not by the 256 000 buffers that passed.
  EXPECT_LE(after.rss_kib, base.rss_kib + 16 * 1024) << "RSS grew";
}

}  // namespace
}  // namespace halloc
