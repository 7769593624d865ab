// Runs the benchmark suite with tiny counts (--smoke) against the real
// hallocd, so that it never rots. Asserts only that it runs and that every
// row comes out with a finite value in well-formed JSON: never a timing.
// And that the allocation worker reports the pool's share of its calls.
#include <fcntl.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "gtest/gtest.h"

extern char** environ;

namespace {

std::string Runfile(const std::string& path) {
  return absl::StrCat(std::getenv("TEST_SRCDIR"), "/halloc/", path);
}

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
  rows.insert("floor.memcpy.8MiB");
  rows.insert("zerocopy.8MiB.consumer_read");
  rows.insert("zerocopy.8MiB.consumer_first_read");
  for (int c : {1, 2, 4, 8, 16}) {
    rows.insert(absl::StrCat("floor.grpc_echo.qps.c", c));
    rows.insert(absl::StrCat("throughput.alloc_4KiB.c", c));
  }
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

// The alloc_lat worker's output, run against a hallocd of `backend`: its
// "key value" lines.
std::map<std::string, std::string> AllocLatencyIn(const std::string& dir,
                                                  const std::string& backend) {
  absl::StatusOr<halloc::Subprocess> daemon = halloc::Subprocess::Spawn(
      {.argv = {Runfile("service/hallocd"), "--control_socket=" + dir + "/c.sock",
                "--broker_socket=" + dir + "/b.sock", "--backend=" + backend}});
  EXPECT_TRUE(daemon.ok()) << daemon.status();
  if (!daemon.ok()) return {};
  // The control socket is bound last: once it exists, both are up.
  for (int i = 0; i < 1000 && ::access((dir + "/c.sock").c_str(), F_OK) != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return {};
  halloc::UniqueFd r(p[0]), w(p[1]);
  halloc::SpawnOptions o;
  o.argv = {Runfile("tests/bench/halloc_bench"), "alloc_lat", "--size=4096", "--n=20",
            "--mode=warm", "--path=broker", "--control=" + dir + "/c.sock",
            "--broker=" + dir + "/b.sock"};
  o.stdout_fd = w.get();
  absl::StatusOr<halloc::Subprocess> worker = halloc::Subprocess::Spawn(o);
  EXPECT_TRUE(worker.ok()) << worker.status();
  if (!worker.ok()) return {};
  w.reset();
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(r.get(), buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  const int status = *worker->Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << text;
  std::map<std::string, std::string> values;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, ' ');
    values[kv.first] = kv.second;
  }
  return values;
}

std::map<std::string, std::string> AllocLatency(const std::string& backend) {
  // Not TEST_TMPDIR: socket paths must stay short.
  char tmpl[] = "/tmp/halloc-bench-smoke-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return {};
  std::map<std::string, std::string> values = AllocLatencyIn(tmpl, backend);
  std::error_code ec;
  std::filesystem::remove_all(tmpl, ec);  // hallocd is gone by now
  return values;
}

// The warm rows say when the pool's stock did not serve their calls: the
// worker counts the pool's hits and misses over its timed calls.
TEST(BenchSmokeTest, TheAllocationWorkerSaysWhichShareThePoolServed) {
  std::map<std::string, std::string> pooled = AllocLatency("memfd-pool");
  ASSERT_TRUE(pooled.count("alloc.p50"));
  ASSERT_TRUE(pooled.count("pool.hits_pct"));
  double hits = -1;
  ASSERT_TRUE(absl::SimpleAtod(pooled["pool.hits_pct"], &hits)) << pooled["pool.hits_pct"];
  EXPECT_GE(hits, 0);
  EXPECT_LE(hits, 100);
  // No pool: no hits or misses to count, no such line.
  std::map<std::string, std::string> plain = AllocLatency("memfd");
  ASSERT_TRUE(plain.count("alloc.p50"));
  EXPECT_FALSE(plain.count("pool.hits_pct")) << plain["pool.hits_pct"];
}

}  // namespace
