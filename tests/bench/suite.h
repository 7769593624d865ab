// The benchmark driver's suite (driver.cc, driver_load.cc): its plan, the
// helpers its rows share, and the Suite that runs the workers and collects
// the rows. Internal to halloc_bench.
#ifndef HALLOC_TESTS_BENCH_SUITE_H_
#define HALLOC_TESTS_BENCH_SUITE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/child.h"
#include "tests/bench/report.h"

namespace halloc::bench {

inline const char* const kPcts[] = {"p50", "p90", "p99", "p99.9", "max"};

// fds of hallocd's the scale rows leave to anything but live buffers
// (sockets, the pool's stock).
inline constexpr int kScaleHeadroom = 2000;

// How much of everything to run.
struct Plan {
  int lat_n;                       // echo / scm samples
  std::map<uint64_t, int> warm_n;  // per size
  std::map<uint64_t, int> cold_n;
  std::map<uint64_t, int> floor_n;
  int tput_ms;
  std::vector<int> live_levels;
  int probe_n;
  int share_n;
  int passes;
  int fanout_n;  // revokes per onward level
};

// The plan --smoke, --quick or neither asks for.
Plan MakePlan(const Args& a);

// "4KiB", "1MiB"; "10k".
std::string SizeName(uint64_t size);
std::string LiveName(int n);

// A worker's "key value" lines.
using Values = std::map<std::string, double>;
// The value of `key`; NaN when the worker did not report it.
double Get(const Values& v, const std::string& key);

// For a warm row: says so when the pool's stock served fewer than 95% of
// its timed calls (its refills fell behind: the row measured cold calls
// too); "" otherwise, or when the worker could not tell.
std::string PoolNote(const Values& v);

// For a broker row: says so when the client changed CPU during or just
// before at least 10% of its calls (the servers that follow it then move
// too, and those calls pay for the moves: README, "Performance").
std::string BrokerNote(const Values& v);

class Suite {
 public:
  Suite(const Args& args, std::string self, std::string dir)
      : args_(args), plan_(MakePlan(args)), self_(std::move(self)),
        dir_(std::move(dir)) {}

  int Run();

 private:
  std::string Sock(const std::string& name) const { return dir_ + "/" + name; }
  std::vector<std::string> Halloc(std::vector<std::string> argv,
                                  const std::string& prefix = "") const {
    argv.push_back("--control=" + Sock(prefix + "control.sock"));
    argv.push_back("--broker=" + Sock(prefix + "broker.sock"));
    return argv;
  }
  // Runs one worker to completion; its values (empty on failure).
  Values Work(const std::vector<std::string>& argv);
  absl::Status StartServers();
  // A hallocd on sockets named `prefix`control.sock and `prefix`broker.sock,
  // its rule with `quota` added.
  absl::StatusOr<Child> SpawnDaemon(const std::string& prefix, const std::string& quota);
  absl::Status StartDaemon();
  // Broker-path allocations per second of `clients` workers against the
  // hallocd on sockets `prefix`...; NaN on failure.
  double BrokerQps(int clients, const std::string& prefix);

  void Floors();
  void Allocations();
  void Sharing();
  void RevokeFanout();
  void ZeroCopy();
  void Throughput();
  void Scale();

  void Add(Row row) { rows_.push_back(std::move(row)); }

  const Args& args_;
  const Plan plan_;
  const std::string self_;
  const std::string dir_;
  std::optional<Child> echo_, scm_, daemon_;
  Values echo_lat_;
  double scm_p50_ = kNaN;
  std::map<uint64_t, Values> memfd_;
  std::vector<Row> rows_;
  std::map<int, double> broker_qps_;  // per client count
  int failures_ = 0;
};

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_SUITE_H_
