#include "tests/bench/driver.h"

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "tests/bench/child.h"
#include "tests/bench/report.h"
#include "tests/bench/suite.h"

namespace halloc::bench {

Plan MakePlan(const Args& a) {
  constexpr uint64_t K4 = 4096, M1 = 1 << 20, M8 = 8 << 20, M32 = 32 << 20;
  // clang-format off
  if (a.Has("smoke")) {
    return {30, {{K4, 20}, {M1, 20}, {M8, 20}, {M32, 20}},
            {{K4, 10}, {M1, 10}, {M8, 10}, {M32, 10}},
            {{K4, 10}, {M1, 10}, {M8, 10}, {M32, 10}},
            100, {0, 1000, 10000}, 30, 20, 3, 3};
  }
  if (a.Has("quick")) {
    return {400, {{K4, 400}, {M1, 300}, {M8, 200}, {M32, 100}},
            {{K4, 200}, {M1, 100}, {M8, 60}, {M32, 40}},
            {{K4, 200}, {M1, 100}, {M8, 50}, {M32, 30}},
            500, {0, 1000, 10000, 100000}, 300, 200, 10, 8};
  }
  return {3000, {{K4, 3000}, {M1, 2000}, {M8, 1500}, {M32, 1000}},
          {{K4, 1000}, {M1, 1000}, {M8, 400}, {M32, 200}},
          {{K4, 2000}, {M1, 1000}, {M8, 300}, {M32, 200}},
          2000, {0, 1000, 10000, 100000}, 1000, 1000, 20, 20};
  // clang-format on
}

std::string SizeName(uint64_t size) {
  if (size >= (1 << 20)) return absl::StrCat(size >> 20, "MiB");
  return absl::StrCat(size >> 10, "KiB");
}

std::string LiveName(int n) {
  if (n >= 1000) return absl::StrCat(n / 1000, "k");
  return absl::StrCat(n);
}

double Get(const Values& v, const std::string& key) {
  auto it = v.find(key);
  return it == v.end() ? kNaN : it->second;
}

// For a warm row: says so when the pool's stock served fewer than 95% of
// its timed calls (its refills fell behind: the row measured cold calls
// too); "" otherwise, or when the worker could not tell.
std::string PoolNote(const Values& v) {
  const double hits = Get(v, "pool.hits_pct");
  if (!std::isfinite(hits) || hits >= 95) return "";
  return absl::StrFormat(
      "only %.0f%% of these calls came from the pool's stock (its refills fell behind)", hits);
}

// For a broker row: says so when the client changed CPU during or just
// before at least 10% of its calls (the servers that follow it then move
// too, and those calls pay for the moves: README, "Performance").
std::string BrokerNote(const Values& v) {
  std::string note = PoolNote(v);
  const double changes = Get(v, "cpu.changes_pct");
  if (std::isfinite(changes) && changes >= 10) {
    absl::StrAppend(&note, note.empty() ? "" : "; ",
                    absl::StrFormat("the client changed CPU during or just before %.0f%% "
                                    "of these calls",
                                    changes));
  }
  return note;
}

Values Suite::Work(const std::vector<std::string>& argv) {
  std::vector<std::string> full = {self_};
  full.insert(full.end(), argv.begin(), argv.end());
  absl::StatusOr<Child> child = Child::Spawn(full);
  if (!child.ok()) {
    ++failures_;
    return {};
  }
  child->CloseStdin();
  Values v = child->ReadValues();
  const int status = child->Wait();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "halloc_bench: worker %s failed (status %d)\n",
                 argv[0].c_str(), status);
    ++failures_;
    return {};
  }
  return v;
}

absl::Status Suite::StartServers() {
  for (auto [slot, kind] : {std::pair{&echo_, "echo"}, std::pair{&scm_, "scm"}}) {
    absl::StatusOr<Child> c = Child::Spawn(
        {self_, absl::StrCat(kind, "_server"),
         "--socket=" + Sock(absl::StrCat(kind, ".sock"))});
    if (!c.ok()) return c.status();
    slot->emplace(*std::move(c));
    absl::StatusOr<std::string> ready = (*slot)->ReadLine();
    if (!ready.ok() || *ready != "ready") {
      return absl::UnavailableError(absl::StrCat(kind, " server did not start"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Child> Suite::SpawnDaemon(const std::string& prefix,
                                          const std::string& quota) {
  // The built-in policy's, but without its cap on one uid's live buffers
  // (half of hallocd's fds): the scale rows hold up to 100k in one uid.
  // `quota` (a rule field) is for the row that measures what a quota adds.
  const std::string policy = Sock(prefix + "policy.textproto");
  {
    std::ofstream out(policy);
    out << "clients { name: \"bench\" match { any: true } usages: \"*\" heaps: \"*\"\n"
           "  max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: \"*\" "
        << quota << "\n"
        << "  share_to: \"@same_uid\" receive_from: \"@same_uid\" }\n";
    if (!out) return absl::InternalError("cannot write " + policy);
  }
  ::chmod(policy.c_str(), 0644);  // hallocd reads no group-writable policy (umask 002)
  // hallocd raises its fd limit to the hard one, which it inherits: the
  // bench's few clients leave buffers all of it but half the scale rows'
  // headroom (the other half: the probes' buffers beside the largest
  // level). By default hallocd keeps what its connection limits could take.
  rlimit nofile{};
  std::vector<std::string> argv = {
      args_.Str("hallocd"), "--control_socket=" + Sock(prefix + "control.sock"),
      "--broker_socket=" + Sock(prefix + "broker.sock"),
      "--backend=" + args_.Str("backend", "memfd-pool"), "--socket_mode=0600",
      "--policy=" + policy};
  // --control_direct: gRPC reads the connections itself (Linux 6.16+),
  // not through hallocd's relay (its default).
  if (args_.Has("control_direct")) argv.push_back("--nocontrol_relay");
  // Its clients are the bench's own uid, which is no boundary here: its
  // read-only views bind them as any other (run as root, hallocd binds
  // every uid anyway). Dumpable: run as a user, the bench counts its fds
  // (/proc/PID/fd) only so.
  argv.insert(argv.end(), {"--read_only_for_own_uid", "--dumpable"});
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_max != RLIM_INFINITY &&
      nofile.rlim_max > kScaleHeadroom) {
    argv.push_back(absl::StrCat("--max_buffers=", nofile.rlim_max - kScaleHeadroom / 2));
  }
  const std::string control = Sock(prefix + "control.sock");
  absl::StatusOr<Child> d = Child::Spawn(argv, Sock(prefix + "hallocd.log"));
  if (!d.ok()) return d.status();
  // The control socket is bound last (daemon.cc): once it exists, both are up.
  struct stat st;
  for (int i = 0; i < 1000; ++i) {
    if (::stat(control.c_str(), &st) == 0) return d;
    absl::SleepFor(absl::Milliseconds(10));
  }
  d->Signal(SIGTERM);
  d->Wait();
  return absl::UnavailableError("hallocd did not start; see " + Sock(prefix + "hallocd.log"));
}

absl::Status Suite::StartDaemon() {
  absl::StatusOr<Child> d = SpawnDaemon("", "");
  if (!d.ok()) return d.status();
  daemon_.emplace(*std::move(d));
  return absl::OkStatus();
}

void Suite::Floors() {
  echo_lat_ = Work({"echo_lat", "--socket=" + Sock("echo.sock"),
                    absl::StrCat("--n=", plan_.lat_n)});
  const Values scm = Work({"scm_lat", "--socket=" + Sock("scm.sock"),
                           absl::StrCat("--n=", plan_.lat_n)});
  for (const char* p : kPcts) {
    Add(FloorRow(absl::StrCat("floor.grpc_echo.", p), Get(echo_lat_, absl::StrCat("echo.", p)), "us"));
  }
  for (const char* p : kPcts) {
    Add(FloorRow(absl::StrCat("floor.scm_fd.", p), Get(scm, absl::StrCat("scm.", p)), "us"));
  }
  for (const auto& [size, n] : plan_.floor_n) {
    memfd_[size] = Work({"memfd_floor", absl::StrCat("--size=", size),
                         absl::StrCat("--n=", n)});
    for (const char* p : {"p50", "p99"}) {
      Add(FloorRow(absl::StrCat("floor.memfd_commit.", SizeName(size), ".", p),
           Get(memfd_[size], absl::StrCat("memfd.", p)), "us"));
    }
  }
  // One more view of the same figure: fd delivery against its raw floor.
  scm_p50_ = Get(scm, "scm.p50");
}

// Each halloc worker times an echo call next to every call it measures
// ("interleaved"): its rows are judged against that echo, which saw the
// same moment of the machine. The separate floor rows above are context.
void Suite::Allocations() {
  for (const auto& [size, n] : plan_.warm_n) {
    const std::string sz = SizeName(size);
    // Warm calls are paced so that the refill thread (which zeroes what
    // we take) keeps up; faster sustained demand is cold by definition.
    const double commit_us = Get(memfd_[size], "memfd.p50");
    const int64_t pace = size >= (1 << 20) && std::isfinite(commit_us)
                             ? static_cast<int64_t>(2 * commit_us + 100) : 0;
    const std::string echo = "--echo=" + Sock("echo.sock");
    const std::string scm = "--scm=" + Sock("scm.sock");
    // The gRPC path (what a gRPC-only client gets) and the broker fast path
    // (libhalloc's default), same sizes, same pacing.
    const Values warm = Work(Halloc({"alloc_lat", absl::StrCat("--size=", size),
                                     absl::StrCat("--n=", n), "--mode=warm",
                                     absl::StrCat("--pace_us=", pace), echo, scm,
                                     "--path=grpc"}));
    const Values cold = Work(Halloc({"alloc_lat", absl::StrCat("--size=", size),
                                     absl::StrCat("--n=", plan_.cold_n.at(size)),
                                     "--mode=cold", echo, "--path=grpc"}));
    // The broker run interleaves only its own floor (scm_fd): a gRPC echo
    // call before each allocation wakes gRPC's pollers on this 2-CPU box
    // and would be timed into the broker's figures, not its floor's. The
    // floor's call comes before the Allocate and after it in turn: in a
    // fixed order, the second call of each pair finds the client moved to
    // the other CPU more often (the first call's wake-up put it there) and
    // pays for following it; that run is kept beside it (".scm_first").
    // Structured bindings are captured by init-capture (clang, C++17).
    auto broker_run = [&, size = size, n = n](const char* order) {
      return Work(Halloc({"alloc_lat", absl::StrCat("--size=", size), absl::StrCat("--n=", n),
                          "--mode=warm", absl::StrCat("--pace_us=", pace), scm, "--path=broker",
                          absl::StrCat("--order=", order)}));
    };
    const Values fast = broker_run("alternate");
    const Values scm_first = broker_run("scm_first");
    for (const char* p : kPcts) {
      const std::string pct(p);
      std::optional<double> target;
      if (pct == "p50") target = 1.1;
      if (pct == "p99") target = 1.5;
      Row row = Compare(absl::StrCat("alloc.warm.", sz, ".", p), Get(warm, "alloc." + pct),
                        "us", "grpc_echo(interleaved)." + pct, Get(warm, "echo." + pct),
                        target);
      if (pct == "p50") row.note = PoolNote(warm);
      Add(std::move(row));
    }
    // The gRPC path's physical floor: one gRPC call plus one fd over a
    // Unix socket, both timed interleaved with it.
    {
      Add(Compare(absl::StrCat("alloc.warm.", sz, ".p50.vs_echo+scm"),
                  Get(warm, "alloc.p50"), "us",
                  "grpc_echo(interleaved)+scm_fd(interleaved).p50",
                  Get(warm, "echo.p50") + Get(warm, "scm.p50"), 1.1));
    }
    // The broker path's floor is one Unix-socket round trip carrying an fd,
    // timed interleaved with it.
    for (const char* p : kPcts) {
      const std::string pct(p);
      std::optional<double> target;
      if (size <= (1 << 20) && pct == "p50") target = 1.5;
      if (size <= (1 << 20) && pct == "p99") target = 2.0;
      Row row =
          Compare(absl::StrCat("broker.alloc.warm.", sz, ".", p), Get(fast, "alloc." + pct), "us",
                  "scm_fd(interleaved, alternating)." + pct, Get(fast, "scm." + pct), target);
      if (pct == "p50") row.note = BrokerNote(fast);
      Add(std::move(row));
    }
    for (const char* p : {"p50", "p99"}) {
      const std::string pct(p);
      Row row = Compare(absl::StrCat("broker.alloc.warm.", sz, ".", p, ".scm_first"),
                        Get(scm_first, "alloc." + pct), "us",
                        "scm_fd(interleaved, always first)." + pct, Get(scm_first, "scm." + pct));
      if (pct == "p50") row.note = BrokerNote(scm_first);
      Add(std::move(row));
    }
    for (const char* p : kPcts) {
      const std::string pct(p);
      std::optional<double> target;
      if (pct == "p50" && size >= (1 << 20)) target = 1.2;
      Add(Compare(absl::StrCat("alloc.cold.", sz, ".", p), Get(cold, "alloc." + pct),
                  "us", absl::StrCat("echo+memfd_commit(interleaved).", pct),
                  Get(cold, "echo." + pct) + Get(cold, "memfd." + pct), target));
    }
    for (const char* p : {"p50", "p99"}) {
      const std::string pct(p);
      Add(Compare(absl::StrCat("release.", sz, ".", p), Get(warm, "release." + pct),
                  "us", "grpc_echo(interleaved)." + pct, Get(warm, "echo." + pct)));
      Add(Compare(absl::StrCat("broker.release.", sz, ".", p), Get(fast, "release." + pct), "us",
                  "scm_fd(interleaved, alternating)." + pct, Get(fast, "scm." + pct)));
    }
    if (size == 4096) {
      Add(Compare("alloc.warm.4KiB.p50.vs_scm", Get(warm, "alloc.p50"), "us",
                  "scm_fd.p50", scm_p50_));
    }
  }
}

// The first three fields of /proc/loadavg.
namespace {

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

}  // namespace

int Suite::Run() {
  if (absl::Status s = StartServers(); !s.ok()) {
    std::fprintf(stderr, "halloc_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  if (absl::Status s = StartDaemon(); !s.ok()) {
    std::fprintf(stderr, "halloc_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  const int64_t t0 = NowNs();
  // --only=scale: just the live-buffer scale rows (what the qemu guest runs,
  // where root may raise RLIMIT_NOFILE past this host's hard limit).
  const bool only_scale = args_.Str("only", "") == "scale";
  if (!only_scale) {
    Floors();
    Allocations();
    Sharing();
    RevokeFanout();
    ZeroCopy();
    Throughput();
  }
  Scale();
  daemon_->Signal(SIGTERM);
  daemon_->Wait();
  echo_->CloseStdin();
  echo_->Wait();
  scm_->CloseStdin();
  scm_->Wait();
  PrintRows(rows_);
  std::printf("# backend %s, %d failures, %.0f s, load %s\n",
              args_.Str("backend", "memfd-pool").c_str(), failures_,
              (NowNs() - t0) / 1e9, LoadAverage().c_str());
  if (args_.Has("json")) {
    if (absl::Status s = WriteRowsJson(rows_, args_.Str("json")); !s.ok()) {
      std::fprintf(stderr, "halloc_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  return failures_ == 0 ? 0 : 1;
}

int RunDriver(const Args& args) {
  if (!args.Has("hallocd")) {
    std::fprintf(stderr, "halloc_bench run: --hallocd=PATH is required\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  // Live buffers are fds in hallocd: let it (and the holders) have as many
  // as a systemd service gets (LimitNOFILE hard 512Ki) when we may.
  RaiseFdLimit(true, 1 << 19);
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  char dir[] = "/tmp/halloc-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  int rc;
  {
    Suite suite(args, self, dir);
    rc = suite.Run();
  }
  if (rc == 0 || !args.Has("keep")) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  } else {
    std::fprintf(stderr, "halloc_bench: logs kept in %s\n", dir);
  }
  return rc;
}

}  // namespace halloc::bench
