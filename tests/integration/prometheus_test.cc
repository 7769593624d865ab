// hallocd's metrics through Prometheus's own tools: what `hallocctl stats
// --prometheus` writes (for node_exporter's textfile collector) passes
// `promtool check metrics` and carries hallocd's figures.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "tests/integration/hallocd_process.h"

namespace halloc::testing {
namespace {

// Runs `cmd` through the shell; its exit status and output.
std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/halloc-prom-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    HallocdProcess::Options o;
    // A quota of 2 buffers: the third Allocate is a denial by rule "app".
    o.policy =
        "clients { name: \"app\" match { any: true } usages: \"*\" heaps: \"*\" "
        "max_cpu_access: CPU_ACCESS_READ_WRITE quota_buffers: 2 }\n";
    absl::StatusOr<std::unique_ptr<HallocdProcess>> d = HallocdProcess::Start(dir_, o);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    absl::StatusOr<Client> c = Client::Connect(daemon_->connect_options());
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*std::move(c));
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<Buffer> b = client_->Allocate(BlobDescriptor(8192));
      ASSERT_TRUE(b.ok()) << b.status();
      buffers_.push_back(*std::move(b));
    }
    ASSERT_EQ(client_->Allocate(BlobDescriptor(4096)).status().code(),
              absl::StatusCode::kResourceExhausted);
  }
  void TearDown() override {
    client_.reset();
    daemon_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  std::unique_ptr<HallocdProcess> daemon_;
  std::optional<Client> client_;
  std::vector<Buffer> buffers_;
};

// node_exporter's textfile collector reads what hallocctl writes.
TEST_F(PrometheusTest, HallocctlStatsPrometheusPassesPromtoolAndAgrees) {
  const ConnectOptions& c = daemon_->connect_options();
  const std::string file = dir_ + "/halloc.prom";
  auto [rc, out] = Shell(absl::StrCat(Runfile("clients/cli/hallocctl"),
                                    " --control_socket=", c.control_socket,
                                    " --broker_socket=", c.broker_socket,
                                    " stats --prometheus > ", file));
  ASSERT_EQ(rc, 0) << out;
  std::ifstream in(file);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_TRUE(absl::StrContains(text, "\nhalloc_live_buffers 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "halloc_denials_total{rule=\"app\"} 1\n")) << text;
  auto [prc, pout] = Shell(absl::StrCat("promtool check metrics < ", file));
  EXPECT_EQ(prc, 0) << pout;
  EXPECT_EQ(pout, "") << pout;
}

}  // namespace
}  // namespace halloc::testing
