#include "service/metrics/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glog/logging.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/metrics/loopback_peer.h"
#include "service/util/clock.h"
#include "service/util/log_limit.h"

namespace halloc {

namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

MHD_Result Reply(MHD_Connection* connection, unsigned int code,
                 const std::string& body, const char* content_type) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  // One request per connection: a local user who keeps connections alive
  // with a cheap request now and then must not hold the slots the scraper
  // needs (each connection also ends at its deadline from accept).
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
  if (code == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  const MHD_Result r = MHD_queue_response(connection, code, response);
  MHD_destroy_response(response);
  return r;
}

// Whether a request's Host header (nullptr: none) names this machine's
// loopback: localhost, 127.x.y.z or [::1], with or without a port. A
// script of a web page in a local browser reaches 127.0.0.1 only through
// a name its site controls (DNS rebinding), and its requests carry that
// name; a request without Host (HTTP/1.0) came from no browser.
bool HostIsLoopback(const char* host) {
  if (host == nullptr) return true;
  absl::string_view h(host);
  absl::string_view name = h;
  absl::string_view port;
  if (absl::StartsWith(h, "[")) {
    const size_t close = h.find(']');
    if (close == absl::string_view::npos) return false;
    name = h.substr(1, close - 1);
    port = h.substr(close + 1);
    if (!port.empty() && !absl::ConsumePrefix(&port, ":")) return false;
    in6_addr a6{};
    if (inet_pton(AF_INET6, std::string(name).c_str(), &a6) != 1 || !IN6_IS_ADDR_LOOPBACK(&a6)) {
      return false;
    }
  } else {
    const size_t colon = h.find(':');
    if (colon != absl::string_view::npos) {
      name = h.substr(0, colon);
      port = h.substr(colon + 1);
      if (port.empty()) return false;
    }
    in_addr a4{};
    const bool loopback4 =
        inet_pton(AF_INET, std::string(name).c_str(), &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
    if (!loopback4 && !absl::EqualsIgnoreCase(name, "localhost")) return false;
  }
  return std::all_of(port.begin(), port.end(), absl::ascii_isdigit) && port.size() <= 5;
}

// The endpoint's own log lines: 5 in 10 s, at most 2 of them for one
// uid's doing.
LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(5, absl::Seconds(10), /*per_uid=*/2);
  return *limiter;
}

// libmicrohttpd's lines: 2 in 10 s, a budget of their own. They name no
// uid, so one user's broken requests would otherwise take every line of
// the endpoint's, and those naming uids would be dropped.
LogLimiter& MhdLimiter() {
  static LogLimiter* limiter = new LogLimiter(2, absl::Seconds(10));
  return *limiter;
}

// libmicrohttpd's own lines (a refused or broken connection, say): each
// is triggered by whoever connects, so they are rate-limited and escaped.
void LogFromMhd(void* /*cls*/, const char* fmt, va_list ap) {
  uint64_t dropped = 0;
  if (!MhdLimiter().Allow("metrics-http", &dropped)) return;
  char line[512];
  std::vsnprintf(line, sizeof(line), fmt, ap);
  LOG(WARNING) << "metrics endpoint: " << LogSafe(absl::StripTrailingAsciiWhitespace(line))
               << LogLimiter::Dropped(dropped);
}

}  // namespace

struct MetricsServer::Deadlines {
  struct Open {
    UniqueFd socket;  // a dup of the connection's: cutting it never meets a reused fd
    absl::Time since;
    bool cut = false;
    std::optional<uid_t> counted;  // the uid whose share it takes
  };
  // Connections at once per uid of the process at the other end
  // (LoopbackPeerUid): every local user may connect from any of
  // 127.0.0.0/8, so a limit per address bounds no one (five addresses'
  // worth of held connections kept every scrape out). One whose peer
  // already closed is let through uncounted, to end; one whose uid cannot
  // be told otherwise counts as kUnknownOwner's.
  static constexpr int kPerUid = 4;
  // Whom a connection counts for when the kernel cannot say whose it is:
  // no uid of a process (the kernel's own "no uid"), one of the others
  // when the scraper's uids are known.
  static constexpr uid_t kUnknownOwner = static_cast<uid_t>(-1);

  Deadlines(const Render* render, const Options& options)
      : render(render),
        deadline(options.request_deadline),
        render_interval(options.render_interval),
        scrapers(options.scraper_uids.begin(), options.scraper_uids.end()),
        peer_uid(options.peer_uid) {}

  // Whether a connection of `uid` may take another slot: 4 per uid, and
  // when the scraper's uids are known, kOthers for all the other uids.
  bool RoomFor(uid_t uid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const auto held = per_uid.find(uid);
    if (held != per_uid.end() && held->second >= kPerUid) return false;
    return !IsOther(uid) || others < kOthers;
  }
  // Whether `uid` shares the kOthers slots: not a scraper's, when those
  // are known.
  bool IsOther(uid_t uid) const { return !scrapers.empty() && !scrapers.contains(uid); }

  const Render* const render;
  const absl::Duration deadline;
  const absl::Duration render_interval;
  const absl::flat_hash_set<uid_t> scrapers;
  const PeerUidLookup peer_uid;
  // Whether peer_uid named this process's own connection at Start: only
  // then is its NOT_FOUND taken to mean that the peer is gone (the kernel
  // answers ENOENT for a socket it has not, and for every socket where it
  // has no inet_diag).
  bool lookup_works = false;  // set before the server starts
  absl::Mutex render_mu;
  std::string rendered ABSL_GUARDED_BY(render_mu);
  absl::Time rendered_at ABSL_GUARDED_BY(render_mu) = absl::InfinitePast();
  absl::Mutex mu;
  absl::flat_hash_map<const MHD_Connection*, Open> open ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uid_t, int> per_uid ABSL_GUARDED_BY(mu);
  int others ABSL_GUARDED_BY(mu) = 0;  // counted connections of non-scraper uids
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::thread thread;

  void Start() {
    thread = std::thread([this] { Run(); });
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    if (thread.joinable()) thread.join();
  }
  // Every so often: a connection past its deadline is shut down (both
  // ways); libmicrohttpd then sees it end and closes it on its thread.
  void Run() {
    absl::MutexLock lock(&mu);
    const absl::Duration tick = std::min(deadline / 4, absl::Milliseconds(500));
    for (;;) {
      mu.AwaitWithTimeout(absl::Condition(&stopping), tick);
      if (stopping) return;
      const absl::Time now = MonotonicNow();
      for (auto& [connection, o] : open) {
        if (o.cut || now - o.since < deadline) continue;
        ::shutdown(o.socket.get(), SHUT_RDWR);
        o.cut = true;
      }
    }
  }

  // The exposition text, rendered anew only once render_interval has
  // passed since the last render.
  std::string Text() {
    absl::MutexLock lock(&render_mu);
    const absl::Time now = MonotonicNow();
    if (now - rendered_at >= render_interval) {
      rendered = (*render)();
      rendered_at = now;
    }
    return rendered;
  }

  static void Notify(void* cls, MHD_Connection* connection, void** /*socket_context*/,
                     MHD_ConnectionNotificationCode code) {
    auto* self = static_cast<Deadlines*>(cls);
    absl::MutexLock lock(&self->mu);
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
      auto it = self->open.find(connection);
      if (it == self->open.end()) return;
      if (const std::optional<uid_t> uid = it->second.counted) {
        if (--self->per_uid[*uid] == 0) self->per_uid.erase(*uid);
        if (self->IsOther(*uid)) --self->others;
      }
      self->open.erase(it);
      return;
    }
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    UniqueFd dup(info != nullptr ? ::fcntl(info->connect_fd, F_DUPFD_CLOEXEC, 0) : -1);
    if (!dup) {
      // Out of fds: neither counted nor cut at its deadline (a peer
      // trickling bytes would keep its slot for good): ended now.
      if (info != nullptr) ::shutdown(info->connect_fd, SHUT_RDWR);
      return;
    }
    Open o{std::move(dup), MonotonicNow()};
    absl::StatusOr<uid_t> uid = self->peer_uid(o.socket.get());
    if (!uid.ok() && !(absl::IsNotFound(uid.status()) && self->lookup_works)) {
      // Counted all the same, as nobody's in particular: a limit that
      // lapsed whenever the kernel could not be asked would hold no one.
      if (uint64_t dropped; self->lookup_works && Limiter().Allow("metrics-http", &dropped)) {
        LOG(WARNING) << "metrics endpoint: cannot tell whose a connection is ("
                     << LogSafe(uid.status().message()) << "); counted as an unknown uid's"
                     << LogLimiter::Dropped(dropped);
      }
      uid = kUnknownOwner;
    }
    if (uid.ok()) {
      if (!self->RoomFor(*uid)) {
        // Ended at once: libmicrohttpd sees it close and forgets it.
        ::shutdown(o.socket.get(), SHUT_RDWR);
        o.cut = true;
        if (uint64_t dropped; Limiter().AllowFor("metrics-http", *uid, &dropped)) {
          const auto held = self->per_uid.find(*uid);
          LOG(WARNING) << "metrics endpoint: "
                       << (*uid == kUnknownOwner ? std::string("an unknown uid")
                                                 : absl::StrCat("uid ", *uid))
                       << " has " << (held == self->per_uid.end() ? 0 : held->second)
                       << " connections open"
                       << (self->scrapers.empty()
                               ? ""
                               : absl::StrCat(", uids not the scraper's ", self->others))
                       << "; ended another" << LogLimiter::Dropped(dropped);
        }
      } else {
        ++self->per_uid[*uid];
        if (self->IsOther(*uid)) ++self->others;
        o.counted = *uid;
      }
    }
    self->open[connection] = std::move(o);
  }

  static MHD_Result OnRequest(void* cls, MHD_Connection* connection, const char* url,
                              const char* method, const char* /*version*/,
                              const char* /*upload_data*/, size_t* upload_data_size,
                              void** /*con_cls*/) {
    auto* self = static_cast<Deadlines*>(cls);
    // A body is neither expected nor read.
    if (upload_data_size != nullptr && *upload_data_size != 0) {
      *upload_data_size = 0;
    }
    const bool get = std::strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                     std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (!get) {
      return Reply(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n",
                   "text/plain");
    }
    if (std::strcmp(url, "/metrics") != 0) {
      return Reply(connection, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n", "text/plain");
    }
    if (!HostIsLoopback(
            MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST))) {
      return Reply(connection, MHD_HTTP_FORBIDDEN,
                   "Host must name a loopback address (localhost, 127.0.0.1, [::1])\n",
                   "text/plain");
    }
    return Reply(connection, MHD_HTTP_OK, self->Text(), kContentType);
  }
};

MetricsServer::MetricsServer(Render render, const Options& options)
    : render_(std::move(render)), deadlines_(std::make_unique<Deadlines>(&render_, options)) {}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(absl::string_view address,
                                                                    Render render) {
  return Start(address, std::move(render), Options());
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    absl::string_view address, Render render, const Options& options) {
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == absl::string_view::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address '", address, "' is not HOST:PORT"));
  }
  std::string host(address.substr(0, colon));
  sockaddr_storage addr{};
  // epoll (MHD_USE_AUTO), never select(): hallocd holds thousands of fds.
  unsigned int flags =
      MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;  // to LogFromMhd
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(),
                  &in6->sin6_addr) != 1 ||
        !IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics address '", address, "': only loopback ([::1]) is served"));
    }
    flags |= MHD_USE_IPv6;
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&addr);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1 ||
        (ntohl(in4->sin_addr.s_addr) >> 24) != 127) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics address '", address, "': only loopback (127.0.0.0/8) is served"));
    }
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(render), options));
  Deadlines* deadlines = server->deadlines_.get();
  if (absl::Status lookup = CheckLoopbackPeerLookup(addr.ss_family, options.peer_uid);
      !lookup.ok()) {
    LOG(ERROR) << "metrics endpoint: cannot tell which uid's process is at the other end of a "
                  "connection here ("
               << LogSafe(lookup.message())
               << "), so all connections count as one unknown uid's: 4 at once, the scraper's "
                  "included. hallocd needs AF_NETLINK (RestrictAddressFamilies=) and the "
                  "kernel's inet_diag and tcp_diag modules";
  } else {
    deadlines->lookup_works = true;
  }
  // One option and its values per line.
  // clang-format off
  server->daemon_ = MHD_start_daemon(
      flags, static_cast<uint16_t>(port), nullptr, nullptr, &Deadlines::OnRequest, deadlines,
      MHD_OPTION_EXTERNAL_LOGGER, &LogFromMhd, nullptr,
      MHD_OPTION_NOTIFY_CONNECTION, &Deadlines::Notify, deadlines,
      MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&addr),
      // No limit per address: every local user connects from 127.0.0.1,
      // the scraper too, so one would let two uids lock the scraper out.
      // Connections count per uid instead (Deadlines::Notify).
      MHD_OPTION_CONNECTION_LIMIT, 16u,
      MHD_OPTION_CONNECTION_TIMEOUT, 10u,
      MHD_OPTION_END);
  // clang-format on
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", address, " (address in use?)"));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : static_cast<uint16_t>(port);
  deadlines->Start();
  return server;
}

MetricsServer::~MetricsServer() {
  deadlines_->Stop();
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);  // its last Notify calls end here
}

}  // namespace halloc
