// Runs the benchmark suite with tiny counts (--smoke) against the real
// hallocd, so that it never rots. Asserts only that it runs and that every
// row comes out with a finite value in well-formed JSON: never a timing.
// And that the allocation worker reports the pool's share of its calls.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"
#include "tests/bench/child.h"
#include "tests/integration/hallocd_process.h"

extern char** environ;

namespace {

using halloc::testing::Runfile;

// The rows a --smoke run must produce (the 100k live-buffer level is left
// out of smoke runs to keep them short).
std::set<std::string> ExpectedRows() {
  std::set<std::string> rows;
  const char* pcts[] = {"p50", "p90", "p99", "p99.9", "max"};
  for (const char* p : pcts) {
    rows.insert(absl::StrCat("floor.grpc_echo.", p));
    rows.insert(absl::StrCat("floor.scm_fd.", p));
  }
  for (const char* size : {"4KiB", "1MiB", "8MiB", "32MiB"}) {
    for (const char* p : {"p50", "p99"}) {
      rows.insert(absl::StrCat("floor.memfd_commit.", size, ".", p));
      rows.insert(absl::StrCat("release.", size, ".", p));
    }
    for (const char* p : pcts) {
      rows.insert(absl::StrCat("alloc.warm.", size, ".", p));
      rows.insert(absl::StrCat("alloc.cold.", size, ".", p));
    }
  }
  rows.insert("alloc.warm.4KiB.p50.vs_scm");
  rows.insert("share_import.1MiB.p50");
  rows.insert("share_import.1MiB.p99");
  for (const char* call : {"import", "revoke", "set_metadata"}) {
    for (const char* p : {"p50", "p99"}) rows.insert(absl::StrCat("broker.", call, ".1MiB.", p));
  }
  for (const char* onward : {"0", "250", "4000"}) {
    rows.insert(absl::StrCat("revoke.onward_", onward, ".p50"));
  }
  rows.insert("revoke.onward_4000.per_grant");
  rows.insert("floor.memcpy.8MiB");
  rows.insert("zerocopy.8MiB.consumer_read");
  rows.insert("zerocopy.8MiB.consumer_first_read");
  for (int c : {1, 2, 4, 8, 16}) {
    rows.insert(absl::StrCat("floor.grpc_echo.qps.c", c));
    rows.insert(absl::StrCat("throughput.alloc_4KiB.c", c));
    rows.insert(absl::StrCat("broker.throughput.alloc_4KiB.c", c));
  }
  rows.insert("broker.throughput.alloc_4KiB.c16.quota");
  for (const char* live : {"0", "1k", "10k"}) {
    rows.insert(absl::StrCat("scale.alloc_4KiB.p50.live_", live));
  }
  rows.insert("memory.daemon_rss_per_live_buffer");
  rows.insert("memory.daemon_fds_per_live_buffer");
  return rows;
}

TEST(BenchSmokeTest, EveryRowIsProducedWithAFiniteValue) {
  const std::string json = absl::StrCat(std::getenv("TEST_TMPDIR"), "/bench.json");
  const std::string bench = Runfile("tests/bench/halloc_bench");
  const std::string hallocd = "--hallocd=" + Runfile("service/hallocd");
  const std::string out = "--json=" + json;
  std::vector<char*> argv = {
      const_cast<char*>(bench.c_str()), const_cast<char*>("run"),
      const_cast<char*>(hallocd.c_str()), const_cast<char*>(out.c_str()),
      const_cast<char*>("--smoke"), nullptr};
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, bench.c_str(), nullptr, nullptr, argv.data(),
                        environ), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  ASSERT_EQ(WEXITSTATUS(status), 0) << "the suite failed; see its output above";

  std::ifstream in(json);
  std::stringstream text;
  text << in.rdbuf();
  google::protobuf::ListValue rows;
  const auto parsed = google::protobuf::util::JsonStringToMessage(text.str(), &rows);
  ASSERT_TRUE(parsed.ok()) << parsed.ToString() << "\n" << text.str();

  const std::set<std::string> keys = {"name",  "value",  "unit", "floor_name",
                                      "floor_value", "ratio", "target", "met"};
  std::set<std::string> seen;
  for (const google::protobuf::Value& row : rows.values()) {
    ASSERT_TRUE(row.has_struct_value());
    const auto& fields = row.struct_value().fields();
    std::set<std::string> have;
    for (const auto& [k, v] : fields) {
      if (k != "note") have.insert(k);  // optional
    }
    EXPECT_EQ(have, keys);
    const std::string name = fields.at("name").string_value();
    SCOPED_TRACE(name);
    EXPECT_TRUE(seen.insert(name).second) << "duplicate row";
    const google::protobuf::Value& value = fields.at("value");
    // A row the machine cannot run (e.g. more live buffers than hallocd's fd
    // limit) has no value and says why.
    if (fields.contains("note") && value.has_null_value()) {
      EXPECT_FALSE(fields.at("note").string_value().empty());
      continue;
    }
    ASSERT_EQ(value.kind_case(), google::protobuf::Value::kNumberValue);
    EXPECT_TRUE(std::isfinite(value.number_value()));
    EXPECT_FALSE(fields.at("unit").string_value().empty());
    // A judged row has a finite floor and ratio; `met` is set iff `target` is.
    const bool judged = fields.at("floor_name").has_string_value();
    if (judged) {
      EXPECT_TRUE(std::isfinite(fields.at("floor_value").number_value()));
      EXPECT_EQ(fields.at("ratio").kind_case(), google::protobuf::Value::kNumberValue);
    }
    EXPECT_EQ(fields.at("target").has_number_value(),
              fields.at("met").has_bool_value());
  }
  for (const std::string& name : ExpectedRows()) {
    EXPECT_TRUE(seen.count(name)) << "missing row " << name;
  }
}

// The alloc_lat worker's "key value" lines, run against a hallocd of
// `backend` (hallocd and the worker started the way the suite starts them).
std::map<std::string, double> AllocLatency(const std::string& backend) {
  halloc::testing::TempDir dir("bench-smoke");
  std::map<std::string, double> values;
  {
    absl::StatusOr<std::unique_ptr<halloc::testing::HallocdProcess>> daemon =
        halloc::testing::HallocdProcess::Start(dir.path(), {.flags = {"--backend=" + backend}});
    EXPECT_TRUE(daemon.ok()) << daemon.status();
    if (daemon.ok()) {
      const halloc::ConnectOptions& o = (*daemon)->connect_options();
      absl::StatusOr<halloc::bench::Child> worker = halloc::bench::Child::Spawn(
          {Runfile("tests/bench/halloc_bench"), "alloc_lat", "--size=4096", "--n=20",
           "--mode=warm", "--path=broker", "--control=" + o.control_socket,
           "--broker=" + o.broker_socket});
      EXPECT_TRUE(worker.ok()) << worker.status();
      if (worker.ok()) {
        worker->CloseStdin();
        values = worker->ReadValues();
        const int status = worker->Wait();
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
      }
    }
  }  // hallocd is gone here
  return values;
}

// The warm rows say when the pool's stock did not serve their calls: the
// worker counts the pool's hits and misses over its timed calls (and the
// broker rows when the client kept changing CPU).
TEST(BenchSmokeTest, TheAllocationWorkerSaysWhichShareThePoolServed) {
  std::map<std::string, double> pooled = AllocLatency("memfd-pool");
  ASSERT_TRUE(pooled.count("alloc.p50"));
  ASSERT_TRUE(pooled.count("pool.hits_pct"));
  const double hits = pooled["pool.hits_pct"];
  EXPECT_GE(hits, 0);
  EXPECT_LE(hits, 100);
  // And how often the client changed CPU between its calls.
  ASSERT_TRUE(pooled.count("cpu.changes_pct"));
  EXPECT_GE(pooled["cpu.changes_pct"], 0);
  EXPECT_LE(pooled["cpu.changes_pct"], 100);
  // No pool: no hits or misses to count, no such line.
  std::map<std::string, double> plain = AllocLatency("memfd");
  ASSERT_TRUE(plain.count("alloc.p50"));
  EXPECT_FALSE(plain.count("pool.hits_pct")) << plain["pool.hits_pct"];
}

}  // namespace
