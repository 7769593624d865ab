// The benchmark suite's rows under load and at scale (Suite in suite.h):
// sharing and revoking, zero-copy reads, throughput at 1 to 16 clients,
// and allocations beside up to 100k live buffers.
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "tests/bench/suite.h"

namespace halloc::bench {

void Suite::Sharing() {
  auto run = [&](const char* path) {
    return Work(Halloc({"share_lat", "--size=1048576", absl::StrCat("--n=", plan_.share_n),
                        "--echo=" + Sock("echo.sock"), absl::StrCat("--path=", path)}));
  };
  const Values v = run("broker");  // libhalloc's default: Import on the broker
  const Values g = run("grpc");
  for (const char* p : {"p50", "p99"}) {
    const std::string pct(p);
    Add(Compare("share_import.1MiB." + pct, Get(v, "share." + pct), "us",
                "2x grpc_echo(interleaved)." + pct, 2 * Get(v, "echo." + pct)));
  }
  // The Import alone: one broker record with the reply and the fd, against
  // the gRPC call whose fd comes ahead of its reply (run just after it);
  // the Revoke of a grant no one imports any more, and a producer's
  // per-frame SetMetadata, on each path.
  for (const char* call : {"import", "revoke", "set_metadata"}) {
    for (const char* p : {"p50", "p99"}) {
      const std::string key = absl::StrCat(call, ".", p);
      Add(Compare(absl::StrCat("broker.", call, ".1MiB.", p), Get(v, key), "us",
                  absl::StrCat("grpc_", key), Get(g, key)));
    }
  }
}

void Suite::RevokeFanout() {
  // A revoke takes the grants shared on from what it cuts off, each in
  // time of its own (linear): the cost per onward grant at 4000 (near a
  // uid's limit, from four sessions) against that at 250, each over the
  // revoke of a grant nobody shared on, in the same run. (Rescanning the
  // buffer per grant, as before 994edde, made it ~10x.)
  std::map<int, double> p50;
  for (int onward : {0, 250, 4000}) {
    const Values v = Work(Halloc({"revoke_fanout", absl::StrCat("--onward=", onward),
                                  absl::StrCat("--n=", plan_.fanout_n)}));
    p50[onward] = Get(v, "revoke.p50");
    Add(FloorRow(absl::StrCat("revoke.onward_", onward, ".p50"), p50[onward], "us"));
  }
  auto per_grant = [&](int onward) { return (p50[onward] - p50[0]) / onward; };
  Add(Compare("revoke.onward_4000.per_grant", per_grant(4000), "us", "revoke.onward_250.per_grant",
              per_grant(250), 2.0));
}

void Suite::ZeroCopy() {
  const Values v = Work(Halloc({"zerocopy", absl::StrCat("--size=", 8 << 20),
                                absl::StrCat("--passes=", plan_.passes)}));
  const double memcpy_gbps = Get(v, "memcpy_gbps");
  Add(FloorRow("floor.memcpy.8MiB", memcpy_gbps, "GB/s"));
  Add(Compare("zerocopy.8MiB.consumer_read", Get(v, "read_gbps"), "GB/s", "memcpy.8MiB",
       memcpy_gbps, 0.9, true));
  Add(Compare("zerocopy.8MiB.consumer_first_read", Get(v, "read_first_gbps"), "GB/s",
       "memcpy.8MiB", memcpy_gbps, std::nullopt, true));
}

void Suite::Throughput() {
  // kind 0: gRPC echo (the floor); 1: Allocate+map over gRPC; 2: the same
  // on the broker fast path.
  for (int clients : {1, 2, 4, 8, 16}) {
    double qps[3] = {0, 0, 0};
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<Child> workers;
      bool ok = true;
      for (int i = 0; i < clients && ok; ++i) {
        std::vector<std::string> argv = {
            self_, "tput", kind == 0 ? "--kind=echo" : "--kind=alloc",
            "--socket=" + Sock("echo.sock"), absl::StrCat("--ms=", plan_.tput_ms)};
        if (kind >= 1) argv = Halloc(argv);
        if (kind == 1) argv.push_back("--path=grpc");
        if (kind == 2) argv.push_back("--path=broker");
        absl::StatusOr<Child> c = Child::Spawn(argv);
        ok = c.ok();
        if (ok) workers.push_back(*std::move(c));
      }
      for (Child& w : workers) ok = ok && w.ReadLine().ok();  // "ready"
      for (Child& w : workers) w.Say("go");
      for (Child& w : workers) {
        const Values v = w.ReadValues();
        ok = ok && w.Wait() == 0;
        qps[kind] += Get(v, "count") / Get(v, "elapsed_s");
      }
      if (!ok) {
        ++failures_;
        qps[kind] = kNaN;
      }
    }
    Add(FloorRow(absl::StrCat("floor.grpc_echo.qps.c", clients), qps[0], "calls/s"));
    std::optional<double> target;
    if (clients >= 4) target = 0.8;
    Add(Compare(absl::StrCat("throughput.alloc_4KiB.c", clients), qps[1], "allocs/s",
         absl::StrCat("grpc_echo.qps.c", clients), qps[0], target, true));
    std::optional<double> broker_target;
    if (clients >= 4) broker_target = 2.0;
    Add(Compare(absl::StrCat("broker.throughput.alloc_4KiB.c", clients), qps[2], "allocs/s",
         absl::StrCat("grpc_echo.qps.c", clients), qps[0], broker_target, true));
    broker_qps_[clients] = qps[2];
  }
  // Under a rule with a quota, every released memfd is followed until its
  // last fd or mapping goes (an inotify watch: README, "Quotas count
  // memory"): what that costs at saturation, against the row above, with
  // a hallocd of its own (the same rule plus a quota that is never reached).
  constexpr int kClients = 16;
  absl::StatusOr<Child> quota = SpawnDaemon("q-", "quota_bytes: 1000000000000000");
  double qps = kNaN;
  if (quota.ok()) {
    qps = BrokerQps(kClients, "q-");
    quota->Signal(SIGTERM);
    quota->Wait();
  } else {
    ++failures_;
  }
  Add(Compare(absl::StrCat("broker.throughput.alloc_4KiB.c", kClients, ".quota"), qps,
              "allocs/s", absl::StrCat("broker.throughput.alloc_4KiB.c", kClients),
              broker_qps_[kClients], std::nullopt, true));
}

double Suite::BrokerQps(int clients, const std::string& prefix) {
  std::vector<Child> workers;
  bool ok = true;
  for (int i = 0; i < clients && ok; ++i) {
    absl::StatusOr<Child> c = Child::Spawn(
        Halloc({self_, "tput", "--kind=alloc", "--path=broker",
                absl::StrCat("--ms=", plan_.tput_ms)},
               prefix));
    ok = c.ok();
    if (ok) workers.push_back(*std::move(c));
  }
  for (Child& w : workers) ok = ok && w.ReadLine().ok();  // "ready"
  for (Child& w : workers) w.Say("go");
  double qps = 0;
  for (Child& w : workers) {
    const Values v = w.ReadValues();
    ok = ok && w.Wait() == 0;
    qps += Get(v, "count") / Get(v, "elapsed_s");
  }
  if (!ok) {
    ++failures_;
    return kNaN;
  }
  return qps;
}

namespace {

// VmRSS in bytes and the number of open fds of `pid`.
std::pair<double, double> ProcUsage(pid_t pid) {
  double rss = kNaN, fds = 0;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::stod(line.substr(6)) * 1024;
  }
  if (DIR* d = ::opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    while (dirent* e = ::readdir(d)) fds += e->d_name[0] != '.';
    ::closedir(d);
  } else {
    fds = kNaN;
  }
  return {rss, fds};
}

// hallocd's soft RLIMIT_NOFILE, or 0 when unknown.
uint64_t FdLimit(pid_t pid) {
  std::ifstream limits(absl::StrCat("/proc/", pid, "/limits"));
  std::string line;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(14));
    uint64_t soft = 0;
    if (fields >> soft) return soft;
  }
  return 0;
}

}  // namespace


void Suite::Scale() {
  // The median p50 of three short runs, each a new client: on a small
  // machine a run's p50 depends on where the scheduler happens to place the
  // client and the broker thread (README, Performance), which is not what
  // this row is about.
  auto probe = [&] {
    std::vector<double> p50s;
    for (int i = 0; i < 3; ++i) {
      p50s.push_back(Get(Work(Halloc({"alloc_lat", "--size=4096", "--mode=warm",
                                      absl::StrCat("--n=", plan_.probe_n)})),
                         "alloc.p50"));
    }
    if (std::any_of(p50s.begin(), p50s.end(), [](double v) { return std::isnan(v); })) {
      return kNaN;  // a run failed (counted in failures_)
    }
    std::sort(p50s.begin(), p50s.end());
    return p50s[1];
  };
  // Every live buffer is one fd in hallocd. Levels its fd limit cannot hold
  // are reported as not run (with the limit), and the largest level it can
  // hold is measured instead.
  const uint64_t limit = FdLimit(daemon_->pid());
  const int reachable =
      limit > kScaleHeadroom ? static_cast<int>((limit - kScaleHeadroom) / 1000 * 1000) : 0;
  std::vector<int> levels;
  std::vector<int> too_many;
  for (int level : plan_.live_levels) {
    if (limit != 0 && level > reachable) {
      too_many.push_back(level);
    } else {
      levels.push_back(level);
    }
  }
  if (!too_many.empty() && reachable > levels.back()) levels.push_back(reachable);

  const double base = probe();
  const auto [rss0, fds0] = ProcUsage(daemon_->pid());
  std::vector<Child> holders;
  int held = 0;
  double rss = kNaN, fds = kNaN;
  for (int level : levels) {
    double p50 = base;
    // Holders take at most kPerHolder buffers each: they have fd limits too.
    constexpr int kPerHolder = 10000;
    bool ok = true;
    while (ok && held < level) {
      const int count = std::min(kPerHolder, level - held);
      absl::StatusOr<Child> h =
          Child::Spawn(Halloc({self_, "hold", absl::StrCat("--count=", count)}));
      ok = h.ok();
      if (ok) {
        holders.push_back(*std::move(h));
        absl::StatusOr<std::string> ready = holders.back().ReadLine();
        ok = ready.ok() && *ready == "ready";
      }
      if (ok) held += count;
    }
    if (!ok) {
      ++failures_;
      p50 = kNaN;
    } else if (level > 0) {
      absl::SleepFor(absl::Milliseconds(300));  // the pool settles
      std::tie(rss, fds) = ProcUsage(daemon_->pid());
      p50 = probe();
    }
    std::optional<double> target;
    if (level == 10000 || level == 100000) target = 1.1;
    Add(Compare("scale.alloc_4KiB.p50.live_" + LiveName(level), p50, "us",
                "scale.alloc_4KiB.p50.live_0", base, target));
  }
  for (int level : too_many) {
    Row r = Compare("scale.alloc_4KiB.p50.live_" + LiveName(level), kNaN, "us",
                    "scale.alloc_4KiB.p50.live_0", base);
    r.note = absl::StrCat("not run: hallocd may open ", limit,
                          " fds (RLIMIT_NOFILE hard limit here), one per live "
                          "buffer; measured live_",
                          LiveName(levels.back()), " instead");
    Add(std::move(r));
  }
  const double n = held;
  Add(Compare("memory.daemon_rss_per_live_buffer", (rss - rss0) / n, "B",
       "budget", 1024, 1.0));
  Add(Compare("memory.daemon_fds_per_live_buffer", (fds - fds0) / n, "fds",
       "one fd per buffer", 1.0));
  for (Child& h : holders) {
    h.CloseStdin();
    h.Wait();
  }
}

}  // namespace halloc::bench
