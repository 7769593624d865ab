#include "service/metrics/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "service/util/log_lines_testing.h"

namespace halloc {
namespace {

// One HTTP/1.0 request to 127.0.0.1:`port`; the whole response.
std::string Fetch(uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "socket failed";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::write(fd, request.data(), request.size()) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  } else {
    out = "connect failed";
  }
  ::close(fd);
  return out;
}

// A server whose text counts its renders ("halloc_live_buffers N"), one
// render at most per `render_interval`.
absl::StatusOr<std::unique_ptr<MetricsServer>> CountingServer(std::atomic<int>& renders,
                                                              absl::Duration render_interval) {
  MetricsServer::Options options;
  options.render_interval = render_interval;
  return MetricsServer::Start(
      "127.0.0.1:0", [&renders] { return absl::StrCat("halloc_live_buffers ", ++renders, "\n"); },
      options);
}

TEST(MetricsServerTest, ServesTheRenderedTextOnGetMetrics) {
  std::atomic<int> renders{0};
  absl::StatusOr<std::unique_ptr<MetricsServer>> s = CountingServer(renders, absl::ZeroDuration());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_NE((*s)->port(), 0);
  std::string r = Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.0 200") || absl::StartsWith(r, "HTTP/1.1 200")) << r;
  EXPECT_TRUE(absl::StrContains(r, "text/plain; version=0.0.4")) << r;
  EXPECT_TRUE(absl::EndsWith(r, "\r\n\r\nhalloc_live_buffers 1\n")) << r;
  r = Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_TRUE(absl::EndsWith(r, "halloc_live_buffers 2\n")) << r;  // rendered per scrape
}

// Scrapes closer together than render_interval share one render: a local
// user who scrapes in a loop does not make hallocd take its Stats (and the
// registry's lock) for each.
TEST(MetricsServerTest, ScrapesWithinTheRenderIntervalShareOneRender) {
  std::atomic<int> renders{0};
  absl::StatusOr<std::unique_ptr<MetricsServer>> s = CountingServer(renders, absl::Hours(1));
  ASSERT_TRUE(s.ok()) << s.status();
  for (int i = 0; i < 5; ++i) {
    const std::string r = Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n");
    EXPECT_TRUE(absl::EndsWith(r, "\r\n\r\nhalloc_live_buffers 1\n")) << r;
  }
  EXPECT_EQ(renders.load(), 1);
}

TEST(MetricsServerTest, OtherPathsAndMethodsAreRefused) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("127.0.0.1:0", [] { return std::string("x 1\n"); });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(absl::StrContains(Fetch((*s)->port(), "GET / HTTP/1.0\r\n\r\n"), " 404 "));
  EXPECT_TRUE(absl::StrContains(
      Fetch((*s)->port(), "GET /metrics/../etc HTTP/1.0\r\n\r\n"), " 404 "));
  const std::string post = Fetch(
      (*s)->port(), "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_TRUE(absl::StrContains(post, " 405 ")) << post;
  // Garbage is answered (400) or dropped, and the server keeps serving.
  Fetch((*s)->port(), "\x01\x02 nonsense\r\n\r\n");
  EXPECT_TRUE(absl::StrContains(Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n"), " 200 "));
}

// A web page in a local browser reaches 127.0.0.1 through a name of its
// site's (DNS rebinding), and says that name in Host: refused. Loopback
// names, with or without a port, and requests without Host are served.
TEST(MetricsServerTest, OnlyLoopbackHostsAreServed) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("127.0.0.1:0", [] { return std::string("x 1\n"); });
  ASSERT_TRUE(s.ok()) << s.status();
  auto get = [&](const std::string& host) {
    return Fetch((*s)->port(), absl::StrCat("GET /metrics HTTP/1.1\r\nHost: ", host,
                                            "\r\nConnection: close\r\n\r\n"));
  };
  for (const char* host : {"127.0.0.1", "127.0.0.1:9464", "127.1.2.3:1", "localhost",
                           "LocalHost:80", "[::1]", "[::1]:9464"}) {
    EXPECT_TRUE(absl::StrContains(get(host), " 200 ")) << host;
  }
  for (const char* host : {"evil.example", "evil.example:9464", "localhost.evil.example",
                           "128.0.0.1", "10.0.0.1:80", "[::2]:80", "[::1", "127.0.0.1:",
                           "127.0.0.1:80:80", "127.0.0.1:x", "[::1]x", "0x7f.0.0.1"}) {
    const std::string r = get(host);
    EXPECT_TRUE(absl::StrContains(r, " 403 ")) << host << ": " << r;
    EXPECT_FALSE(absl::StrContains(r, "x 1")) << host;
  }
  EXPECT_TRUE(absl::StrContains(Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n"), " 200 "));
}

// A client that would keep its connection (HTTP/1.1 keep-alive, a cheap
// request now and then) gets one answer and the connection's end: slots
// are not held by asking.
TEST(MetricsServerTest, AConnectionServesOneRequest) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("127.0.0.1:0", [] { return std::string("x 1\n"); });
  ASSERT_TRUE(s.ok()) << s.status();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons((*s)->port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string req =
      "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n";
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  const timeval tv{3, 0};
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  EXPECT_EQ(n, 0) << "the connection was kept open (read: " << std::strerror(errno) << ")";
  EXPECT_TRUE(absl::StrContains(out, " 200 ")) << out;
  EXPECT_TRUE(absl::StrContains(absl::AsciiStrToLower(out), "connection: close")) << out;
  ::close(fd);
}

// A connection to 127.0.0.1:`port` that sends `bytes` and then nothing.
int Trickle(uint16_t port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

// Connections that never finish their request (a local user trickling
// bytes) fill the slots 127.0.0.1 may use, where the scraper connects
// from too: each is cut at its deadline and the scraper gets through.
// What libmicrohttpd says about the connections it refuses meanwhile
// reaches the log rate-limited.
TEST(MetricsServerTest, RequestsThatNeverEndAreCutAtTheirDeadline) {
  LogLines log("metrics endpoint: ");  // what hallocd logs about the endpoint
  MetricsServer::Options options;
  // Long enough for the 40 refused fetches below on a loaded machine.
  options.request_deadline = absl::Seconds(3);
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("127.0.0.1:0", [] { return std::string("x 1\n"); }, options);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<int> slow;
  for (int i = 0; i < 8; ++i) {  // past the per-uid limit (4): the rest are refused
    const int fd = Trickle((*s)->port(), "GET /metr");
    ASSERT_GE(fd, 0);
    slow.push_back(fd);
  }
  absl::SleepFor(absl::Milliseconds(100));
  for (int i = 0; i < 40; ++i) {
    EXPECT_FALSE(absl::StrContains(Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n"), " 200 "))
        << "the slow connections did not hold the slots: the test shows nothing";
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(8);  // well before the idle timeout
  bool served = false;
  while (!served && absl::Now() < give_up) {
    served = absl::StrContains(Fetch((*s)->port(), "GET /metrics HTTP/1.0\r\n\r\n"), " 200 ");
    if (!served) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(served) << "the scraper never got a slot back";
  for (int fd : slow) {
    char c;
    EXPECT_LE(::read(fd, &c, 1), 0) << "a slow connection was left open";
    ::close(fd);
  }
  const std::vector<std::string> lines = log.lines();
  EXPECT_GE(lines.size(), 1u) << "libmicrohttpd's lines did not reach hallocd's log";
  EXPECT_LE(lines.size(), 5u) << "not rate-limited";
}

// Where the kernel cannot say whose a connection is (no AF_NETLINK under
// the unit's RestrictAddressFamilies=, no inet_diag module: every lookup
// then fails, or answers ENOENT as for a peer that is gone), the per-uid
// limit held no one: every connection went uncounted. It is said at
// start, and they all count as one unknown uid's instead.
TEST(MetricsServerTest, ConnectionsNoOneCanTellTheUidOfCountAsOneUnknownUids) {
  for (const absl::Status& answer :
       {absl::PermissionDeniedError("socket(NETLINK_SOCK_DIAG): refused for the test"),
        absl::NotFoundError("no inet_diag here, for the test")}) {
    SCOPED_TRACE(answer.ToString());
    LogLines log("metrics endpoint: ");
    MetricsServer::Options options;
    options.peer_uid = [answer](int) -> absl::StatusOr<uid_t> { return answer; };
    absl::StatusOr<std::unique_ptr<MetricsServer>> s = MetricsServer::Start(
        "127.0.0.1:0", [] { return std::string("x 1\n"); }, options);
    ASSERT_TRUE(s.ok()) << s.status();
    const std::vector<std::string> lines = log.lines();
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_TRUE(absl::StrContains(lines[0], "all connections count as one unknown uid's"))
        << lines[0];
    EXPECT_TRUE(absl::StrContains(lines[0], answer.message())) << lines[0];
    std::vector<int> held;
    for (int i = 0; i < 8; ++i) {
      const int fd = Trickle((*s)->port(), "GET /metr");
      ASSERT_GE(fd, 0);
      held.push_back(fd);
    }
    // Those past the 4 are ended at once (well within the 10 s deadline);
    // then a moment more, for any beyond them.
    std::vector<pollfd> p;
    for (int fd : held) p.push_back({fd, POLLIN, 0});
    int ended = 0;
    const absl::Time give_up = absl::Now() + absl::Seconds(3);
    for (absl::Time until = give_up; absl::Now() < until;) {
      const int left_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(until - absl::Now()));
      if (::poll(p.data(), p.size(), left_ms) <= 0) break;
      for (pollfd& one : p) {
        char c;
        if (one.fd >= 0 && one.revents != 0 && ::read(one.fd, &c, 1) <= 0) {
          ++ended;
          one.fd = -1;
        }
      }
      if (ended >= 4) until = std::min(give_up, absl::Now() + absl::Milliseconds(200));
    }
    for (int fd : held) ::close(fd);
    EXPECT_EQ(ended, 4) << "connections of no known uid were not held to one uid's 4";
  }
}

// A child process as `uid` holding `n` connections to 127.0.0.1:`port`,
// each a request begun, from 127.0.0.2-.6 in turn, or all from 127.0.0.1
// (`from_scrapers_address`). Held until the Holder is destroyed (which
// kills the child: a pipe's end would be inherited by the Holders forked
// after it).
class Holder {
 public:
  Holder(uint16_t port, uid_t uid, int n, bool from_scrapers_address = false) : uid_(uid) {
    int report[2];
    if (::pipe(report) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {  // syscalls only
      ::close(report[0]);
      if (::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(1);
      int fds[16];
      if (n > 16) ::_exit(3);
      for (int i = 0; i < n; ++i) {
        fds[i] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in from{}, to{};
        from.sin_family = to.sin_family = AF_INET;
        from.sin_addr.s_addr = htonl(from_scrapers_address ? INADDR_LOOPBACK : 0x7f000002 + i % 5);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        to.sin_port = htons(port);
        if (fds[i] < 0 || ::bind(fds[i], reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0 ||
            ::connect(fds[i], reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0 ||
            ::write(fds[i], "GET /metr", 9) != 9) {
          ::_exit(2);
        }
      }
      // Those the server ended at once read EOF within 3 s (a loaded
      // machine ends them late; the held ones have 10 s).
      char ended = 0;
      pollfd p[16];
      for (int i = 0; i < n; ++i) p[i] = {fds[i], POLLIN, 0};
      timespec start{}, now{};
      ::clock_gettime(CLOCK_MONOTONIC, &start);
      for (;;) {
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        const long left_ms =
            3000 - (now.tv_sec - start.tv_sec) * 1000 - (now.tv_nsec - start.tv_nsec) / 1000000;
        if (left_ms <= 0 || ::poll(p, n, static_cast<int>(left_ms)) <= 0) break;
        for (int i = 0; i < n; ++i) {
          char c;
          if (p[i].revents != 0 && p[i].fd >= 0 && ::read(p[i].fd, &c, 1) <= 0) {
            ++ended;
            p[i].fd = -1;
          }
        }
      }
      (void)!::write(report[1], &ended, 1);
      for (;;) ::pause();  // holds the rest until killed
    }
    ::close(report[1]);
    report_ = report[0];
  }
  ~Holder() {
    if (report_ >= 0) ::close(report_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // How many of its connections the server ended at once; -1 when the
  // child failed (could_not_become_uid() says whether for want of `uid`).
  int Ended() {
    char ended = -1;
    if (ended_ == -2 && pid_ > 0) {
      if (::read(report_, &ended, 1) == 1) {
        ended_ = ended;
      } else {
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        cannot_become_uid_ = WIFEXITED(status) && WEXITSTATUS(status) == 1;
        ended_ = -1;
      }
    }
    return ended_;
  }
  bool could_not_become_uid() const { return cannot_become_uid_; }
  uid_t uid() const { return uid_; }

 private:
  const uid_t uid_;
  pid_t pid_ = -1;
  int report_ = -1;
  int ended_ = -2;
  bool cannot_become_uid_ = false;
};

// Told that this process's uid is the scraper's.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartForThisScraper() {
  MetricsServer::Options options;
  options.scraper_uids = {::getuid()};
  return MetricsServer::Start(
      "127.0.0.1:0", [] { return std::string("x 1\n"); }, options);
}

// Four scrapes in a row are served.
void ExpectScrapesServed(uint16_t port) {
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(absl::StrContains(Fetch(port, "GET /metrics HTTP/1.0\r\n\r\n"), " 200 ")) << i;
  }
}

// Any local user may connect from any of 127.0.0.0/8, so the per-address
// limit bounds no one: uid 65534 holding connections that never finish a
// request from five addresses kept every scrape out until their deadline
// (a review helper's attack: 0 of 4 scrapes within Prometheus's 10 s).
// Connections count per uid of the process at the other end: past 4, the
// uid's next are ended at once, and the scraper (another uid) is served.
TEST(MetricsServerTest, OneUidCannotHoldTheScrapersSlots) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s =
      MetricsServer::Start("127.0.0.1:0", [] { return std::string("x 1\n"); });
  ASSERT_TRUE(s.ok()) << s.status();
  Holder holder((*s)->port(), 65534, 16);
  const int ended = holder.Ended();
  if (holder.could_not_become_uid()) GTEST_SKIP() << "cannot become uid 65534";
  EXPECT_EQ(ended, 12) << "uid 65534 kept more than 4 connections (or fewer)";
  // Scrapes go through meanwhile (well within the 10 s the held ones have).
  ExpectScrapesServed((*s)->port());
}

// A user with subordinate uids (newuidmap) connects as many uids, 4 each:
// five of them held all 16 slots and kept the scraper out (a review
// helper's attack: 1 of 7 scrapes in 13 s). Told the scraper's uids, the
// endpoint lets all other uids share half the slots.
TEST(MetricsServerTest, UidsNotTheScrapersShareHalfTheSlots) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s = StartForThisScraper();
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<std::unique_ptr<Holder>> holders;
  for (uid_t uid = 65530; uid < 65535; ++uid) {
    holders.push_back(std::make_unique<Holder>((*s)->port(), uid, 4));
  }
  int ended = 0;
  for (auto& h : holders) {
    const int e = h->Ended();
    if (h->could_not_become_uid()) GTEST_SKIP() << "cannot become uid " << h->uid();
    ASSERT_GE(e, 0) << "uid " << h->uid() << " could not connect";
    ended += e;
  }
  EXPECT_EQ(ended, 20 - MetricsServer::kOthers) << "the other uids held more (or fewer) slots";
  ExpectScrapesServed((*s)->port());
}

TEST(MetricsServerTest, OnlyLoopbackAddressesAreServed) {
  auto render = [] { return std::string(); };
  for (const char* bad : {"0.0.0.0:0", "10.1.2.3:9464", "[::]:0", "localhost:0",
                          "127.0.0.1", "127.0.0.1:70000", ""}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(MetricsServer::Start(bad, render).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<std::unique_ptr<MetricsServer>> a =
      MetricsServer::Start("127.0.0.1:0", render);
  ASSERT_TRUE(a.ok());
  // The same port twice: UNAVAILABLE, not a crash.
  EXPECT_EQ(MetricsServer::Start(absl::StrCat("127.0.0.1:", (*a)->port()), render)
                .status().code(),
            absl::StatusCode::kUnavailable);
}

// Every local user connects from 127.0.0.1 as the scraper does: two uids
// holding 4 connections each there (within their own 4 and the other
// uids' 8) filled libmicrohttpd's 8 per address, and it turned the scraper
// away (a review helper's attack: 0 of 5 scrapes). The per-uid counts
// bound them; the per-address limit is no more.
TEST(MetricsServerTest, UidsHoldingConnectionsFromTheScrapersAddressDoNotLockItOut) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> s = StartForThisScraper();
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<std::unique_ptr<Holder>> holders;
  for (uid_t uid : {65533u, 65534u}) {
    holders.push_back(
        std::make_unique<Holder>((*s)->port(), uid, 4, /*from_scrapers_address=*/true));
  }
  for (auto& h : holders) {
    const int e = h->Ended();
    if (h->could_not_become_uid()) GTEST_SKIP() << "cannot become uid " << h->uid();
    ASSERT_EQ(e, 0) << "uid " << h->uid() << ": within its limits, none is ended";
  }
  ExpectScrapesServed((*s)->port());
}

}  // namespace
}  // namespace halloc
