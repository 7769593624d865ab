// hallocd's metrics through Prometheus's own tools: the /metrics endpoint
// and `hallocctl stats --prometheus` (node_exporter's textfile collector)
// pass `promtool check metrics`, and a real Prometheus server scrapes the
// endpoint and answers queries with hallocd's figures.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "tests/integration/hallocd_process.h"

namespace halloc::testing {
namespace {

// A TCP port on 127.0.0.1 that was free a moment ago.
uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// GET `path` from 127.0.0.1:`port`: the body, or "" on any failure.
std::string HttpGet(uint16_t port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\n\r\n");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
    char buf[8192];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  }
  ::close(fd);
  const size_t body = out.find("\r\n\r\n");
  if (!absl::StartsWith(out, "HTTP/1.") || !absl::StrContains(out.substr(0, 16), " 200 ") ||
      body == std::string::npos) {
    return "";
  }
  return out.substr(body + 4);
}

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
    port_ = FreePort();
    ASSERT_NE(port_, 0);
    HallocdProcess::Options o;
    // A quota of 2 buffers: the third Allocate is a denial by rule "app".
    o.policy =
        "clients { name: \"app\" match { any: true } usages: \"*\" heaps: \"*\" "
        "max_cpu_access: CPU_ACCESS_READ_WRITE quota_buffers: 2 }\n";
    o.flags = {absl::StrCat("--metrics_address=127.0.0.1:", port_)};
    absl::StatusOr<std::unique_ptr<HallocdProcess>> d = HallocdProcess::Start(dir_.path(), o);
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
  }

  TempDir dir_{"prom"};
  uint16_t port_ = 0;
  std::unique_ptr<HallocdProcess> daemon_;
  std::optional<Client> client_;
  std::vector<Buffer> buffers_;
};

// Any local user can bind a loopback port before hallocd (which starts at
// its first client): the allocator serves all the same, and the metrics
// once the port is free. Before, hallocd exited.
TEST(PrometheusPortTest, ATakenPortDoesNotKeepHallocdDown) {
  TempDir dir("prom");
  int squatter = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(squatter, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(squatter, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(squatter, 1), 0);
  ASSERT_EQ(::getsockname(squatter, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const uint16_t port = ntohs(addr.sin_port);
  HallocdProcess::Options o;
  o.flags = {absl::StrCat("--metrics_address=127.0.0.1:", port)};
  absl::StatusOr<std::unique_ptr<HallocdProcess>> d = HallocdProcess::Start(dir.path(), o);
  ASSERT_TRUE(d.ok()) << d.status();
  {
    absl::StatusOr<Client> c = Client::Connect((*d)->connect_options());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->Allocate(BlobDescriptor(4096)).ok());
  }
  ::close(squatter);
  std::string body;
  for (int i = 0; i < 100 && body.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    body = HttpGet(port, "/metrics");
  }
  EXPECT_TRUE(absl::StrContains(body, "halloc_")) << "no metrics once the port was free";
  d->reset();
}

TEST_F(PrometheusTest, EndpointServesHallocdsFiguresAndPassesPromtool) {
  const std::string text = HttpGet(port_, "/metrics");
  ASSERT_FALSE(text.empty()) << daemon_->Log();
  EXPECT_TRUE(absl::StrContains(text, "\nhalloc_live_buffers 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(
      text, absl::StrCat("halloc_client_buffers{client=\"app\",uid=\"", ::getuid(), "\"} 2\n")))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "halloc_denials_total{rule=\"app\"} 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "halloc_allocate_latency_seconds_count 2\n")) << text;
  const std::string file = dir_ / "metrics.prom";
  std::ofstream(file) << text;
  auto [rc, out] = Shell(absl::StrCat("promtool check metrics < ", file));
  EXPECT_EQ(rc, 0) << out;
  // promtool prints lint findings (naming, help text) even when it passes.
  EXPECT_EQ(out, "") << out;
}

// node_exporter's textfile collector reads what hallocctl writes.
TEST_F(PrometheusTest, HallocctlStatsPrometheusPassesPromtoolAndAgrees) {
  const ConnectOptions& c = daemon_->connect_options();
  const std::string file = dir_ / "halloc.prom";
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

TEST_F(PrometheusTest, ARealPrometheusScrapesIt) {
  const uint16_t web = FreePort();
  ASSERT_NE(web, 0);
  const std::string config = dir_ / "prometheus.yml";
  std::ofstream(config) << "global:\n  scrape_interval: 1s\n"
                        << "scrape_configs:\n  - job_name: hallocd\n"
                        << "    static_configs:\n      - targets: ['127.0.0.1:" << port_
                        << "']\n";
  UniqueFd log(
      ::open((dir_ / "prometheus.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  UniqueFd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(log && null);
  SpawnOptions o;
  o.argv = {"/usr/bin/prometheus", "--config.file=" + config,
            "--storage.tsdb.path=" + (dir_ / "tsdb"),
            absl::StrCat("--web.listen-address=127.0.0.1:", web)};
  o.stdout_fd = null.get();
  o.stderr_fd = log.get();
  absl::StatusOr<Subprocess> prometheus = Subprocess::Spawn(o);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  // The first scrape lands within a few seconds of startup.
  std::string answer;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    answer = HttpGet(web, "/api/v1/query?query=halloc_live_buffers");
    if (absl::StrContains(answer, "\"result\":[{")) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  prometheus->Stop(absl::ZeroDuration());
  std::ifstream log_file(dir_ / "prometheus.log");
  const std::string log_text((std::istreambuf_iterator<char>(log_file)), {});
  ASSERT_TRUE(absl::StrContains(answer, "\"result\":[{"))
      << "no scrape in 60 s: " << answer << "\n" << log_text.substr(0, 4000);
  EXPECT_TRUE(absl::StrContains(answer, "\"job\":\"hallocd\"")) << answer;
  EXPECT_TRUE(absl::StrContains(answer, ",\"2\"]")) << answer;
}

}  // namespace
}  // namespace halloc::testing
