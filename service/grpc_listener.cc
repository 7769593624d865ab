#include "service/grpc_listener.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/peer_identity.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

LogLimiter& Limiter() {
  // A kind's 10 lines a second, at most 3 of them for one uid's doing.
  static LogLimiter* limiter = new LogLimiter(10, absl::Seconds(1), /*per_uid=*/3);
  return *limiter;
}

}  // namespace

bool GrpcListener::relay_always = false;
absl::Duration GrpcListener::unread_limit = absl::Seconds(3);
absl::Duration GrpcListener::cut_penalty = absl::Seconds(10);

absl::StatusOr<std::unique_ptr<GrpcListener>> GrpcListener::Start(
    UniqueFd listener, grpc::Server* server, Admit admit, std::shared_ptr<ControlPeers> peers,
    std::function<ConnectRate::Limits()> connect_rate) {
  // Non-blocking, so that a connection gone between poll() and accept()
  // cannot park the thread in accept() where Stop() cannot wake it. (For
  // systemd's socket the flag is on the open file description it shares;
  // systemd only polls it, never accepts.)
  const int flags = ::fcntl(listener.get(), F_GETFL);
  if (flags < 0 || ::fcntl(listener.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK) on the control socket");
  }
  // No gRPC call carries fds. A client could still send one with any byte
  // of its stream; gRPC's read would drop it, and dropping the last
  // reference releases the file on the reading thread: a TCP socket with
  // SO_LINGER and unsent data would hold that thread for the linger time
  // (a few such fds, every gRPC thread). Where the kernel can (6.16+) the
  // client's sendmsg fails instead (EPERM); accepted sockets inherit this
  // at connect(), and each is set again below for a socket handed in
  // (systemd) that was made without it. Elsewhere gRPC reads through a
  // StreamRelay, which takes such fds off its thread.
  std::unique_ptr<StreamRelay> relay;
  const absl::Status refuse = relay_always ? absl::UnimplementedError("relay_always")
                                           : RefuseIncomingFds(listener.get());
  if (!refuse.ok()) {
    if (!absl::IsUnimplemented(refuse)) return refuse;
    ASSIGN_OR_RETURN(relay, StreamRelay::Start());
  }
  const bool relay_all = relay != nullptr;
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoStatus(errno, "eventfd");
  UniqueFd ends(::epoll_create1(EPOLL_CLOEXEC));
  if (!ends) return ErrnoStatus(errno, "epoll_create1");
  ASSIGN_OR_RETURN(AcceptGuard accept_guard, AcceptGuard::Create());
  std::unique_ptr<GrpcListener> l(new GrpcListener(
      std::move(listener), std::move(wake), std::move(ends), std::move(accept_guard), server,
      std::move(admit), std::move(relay), relay_all, std::move(peers), std::move(connect_rate)));
  l->thread_ = std::thread([p = l.get()] { p->Run(); });
  return l;
}

GrpcListener::GrpcListener(UniqueFd listener, UniqueFd wake, UniqueFd ends,
                           AcceptGuard accept_guard, grpc::Server* server, Admit admit,
                           std::unique_ptr<StreamRelay> relay, bool relay_all,
                           std::shared_ptr<ControlPeers> peers,
                           std::function<ConnectRate::Limits()> connect_rate)
    : listener_(std::move(listener)),
      wake_(std::move(wake)),
      ends_(std::move(ends)),
      accept_guard_(std::move(accept_guard)),
      server_(server),
      admit_(std::move(admit)),
      peers_(std::move(peers)),
      connect_rate_limits_(std::move(connect_rate)),
      relay_all_(relay_all),
      relay_(std::move(relay)) {}

GrpcListener::~GrpcListener() {
  Stop();
  if (relay_) relay_->Stop();  // every relayed connection ends
  absl::MutexLock lock(&mu_);
  for (const auto& [dup, conn] : conns_) CloseDup(dup);
}

void GrpcListener::RefuseSaying(UniqueFd conn, const ucred& cred, uid_t uid, StreamRelay* relay,
                                const absl::Status& why) {
  // A share per uid: one refused on and on (tens of thousands of
  // connections a second) leaves others' refusals their lines.
  if (uint64_t dropped; Limiter().AllowFor("control-refused", uid, &dropped)) {
    LOG(WARNING) << "control socket: refused a connection: " << why.message() << " (pid "
                 << cred.pid << ")" << LogLimiter::Dropped(dropped);
  }
  Refuse(std::move(conn), uid, relay);
}

absl::Status GrpcListener::WithinRate(uid_t uid) {
  if (!connect_rate_limits_) return absl::OkStatus();
  absl::Status s =
      connect_rate_.Admit(connect_rate_limits_(), uid, MonotonicNow(), "control connections");
  if (!s.ok()) rate_limited_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

StreamRelay* GrpcListener::RelayFor(int conn) {
  if (!relay_all_ && !AcceptsIncomingFds(conn)) return nullptr;
  if (!relay_) {
    // A connection made before the listener refused fds (6.16+: one that
    // waited on a socket systemd handed over) keeps what it queued then.
    absl::StatusOr<std::unique_ptr<StreamRelay>> relay = StreamRelay::Start();
    if (!relay.ok()) {
      LOG_EVERY_N(WARNING, 100) << "control socket: relay: " << relay.status();
      return nullptr;
    }
    relay_ = *std::move(relay);
  }
  return relay_.get();
}

void GrpcListener::Refuse(UniqueFd conn, uid_t uid, StreamRelay* relay) {
  if (conn && relay != nullptr) relay->Discard(std::move(conn), uid);
}

void GrpcListener::CloseDup(int dup) {
  // Out of the set first: the entry belongs to the open file, which gRPC's
  // fd keeps alive, so closing ours alone would leave it there (reported
  // again and again, under a number the next dup may reuse).
  ::epoll_ctl(ends_.get(), EPOLL_CTL_DEL, dup, nullptr);
  ::close(dup);
}

void GrpcListener::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    PLOG(ERROR) << "control socket: cannot wake the accepting thread";
  }
  if (thread_.joinable()) thread_.join();
}

uint64_t GrpcListener::cut_total() const {
  absl::MutexLock lock(&mu_);
  return cut_total_;
}

ConnectionCounts GrpcListener::held(uid_t uid) const {
  absl::MutexLock lock(&mu_);
  auto it = per_uid_.find(uid);
  return {it == per_uid_.end() ? 0 : it->second, static_cast<uint32_t>(conns_.size())};
}

void GrpcListener::Run() {
  for (;;) {
    pollfd fds[3] = {{wake_.get(), POLLIN, 0},
                     {ends_.get(), POLLIN, 0},
                     {listener_.get(), POLLIN, 0}};
    const absl::Time now = MonotonicNow();
    const bool guarded = accept_guard_.Paused(now);
    // Too many fds clients sent wait to be closed: no new connections (each
    // could end with more queued) until some are; looked at every 100 ms.
    const bool full = relay_ && relay_->Full();
    const bool paused = guarded || full;
    int timeout =
        guarded ? static_cast<int>(std::max<int64_t>(
                      0, absl::ToInt64Milliseconds(accept_guard_.resume_at() - now) + 1))
                : -1;
    if (full) timeout = timeout < 0 ? 100 : std::min(timeout, 100);
    {
      absl::MutexLock lock(&mu_);
      if (!conns_.empty()) timeout = timeout < 0 ? 500 : std::min(timeout, 500);
    }
    const int n = ::poll(fds, paused ? 2 : 3, timeout);
    if (n < 0 && errno != EINTR) {
      PLOG(ERROR) << "control socket: poll";
      return;
    }
    if (n > 0 && fds[0].revents != 0) return;
    // Ends first: a uid at its limit that closed one may connect again.
    if (n > 0 && fds[1].revents != 0) Reap();
    if (!paused && n > 0 && fds[2].revents != 0) AcceptOne();
    if (const absl::Time t = MonotonicNow(); t >= next_unread_check_) {
      CutUnread(t);
      next_unread_check_ = t + absl::Milliseconds(500);
    }
  }
}

absl::Time GrpcListener::CutUntil(uid_t uid) const {
  absl::MutexLock lock(&mu_);
  auto it = cut_until_.find(uid);
  return it == cut_until_.end() ? absl::InfinitePast() : it->second;
}

void GrpcListener::CutUnread(absl::Time now) {
  absl::MutexLock lock(&mu_);
  for (auto& [dup, conn] : conns_) {
    int queued = 0;
    if (conn.cut || ::ioctl(dup, SIOCOUTQ, &queued) != 0) continue;
    if (queued < kUnreadBytes) {
      conn.unread_since = absl::InfiniteFuture();
      continue;
    }
    if (conn.unread_since == absl::InfiniteFuture()) conn.unread_since = now;
    if (now - conn.unread_since < unread_limit) continue;
    const bool penalised = CutLocked(dup, conn, now);
    if (uint64_t dropped; Limiter().AllowFor("control-unread", conn.uid, &dropped)) {
      LOG(WARNING) << "control socket: cut a connection of uid " << conn.uid << ": " << queued
                   << " bytes sent it went unread for " << absl::FormatDuration(unread_limit)
                   << (penalised ? absl::StrCat("; its connections are refused for ",
                                                absl::FormatDuration(cut_penalty))
                                 : std::string())
                   << LogLimiter::Dropped(dropped);
    }
  }
  absl::erase_if(cut_until_, [now](const auto& c) { return c.second <= now; });
}

bool GrpcListener::CutLocked(int dup, Conn& conn, absl::Time now) {
  // gRPC sees the connection end and lets its calls go; the duplicate
  // sees it too, and the count drops (Reap).
  ::shutdown(dup, SHUT_RDWR);
  conn.cut = true;
  ++cut_total_;
  // Not the operators (root's tools, hallocd's own uid), held to no
  // per-uid limit either: their other connections go on.
  if (IsOperatorUid(conn.uid)) return false;
  cut_until_[conn.uid] = now + cut_penalty;
  return true;
}

void GrpcListener::CutUid(uid_t uid, absl::string_view why) {
  if (IsOperatorUid(uid)) return;
  int cut = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = MonotonicNow();
    for (auto& [dup, conn] : conns_) {
      if (conn.uid != uid || conn.cut) continue;
      CutLocked(dup, conn, now);
      ++cut;
    }
    cut_until_[uid] = now + cut_penalty;  // (with no connection left to cut too)
  }
  if (uint64_t dropped; Limiter().AllowFor("control-cut", uid, &dropped)) {
    LOG(WARNING) << "control socket: cut " << cut << " connection(s) of uid " << uid << " (" << why
                 << "); its connections are refused for " << absl::FormatDuration(cut_penalty)
                 << LogLimiter::Dropped(dropped);
  }
}

void GrpcListener::Reap() {
  epoll_event events[64];
  const int n = ::epoll_wait(ends_.get(), events, 64, 0);
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < n; ++i) {
    const int dup = events[i].data.fd;
    auto it = conns_.find(dup);
    if (it == conns_.end()) continue;
    if (auto u = per_uid_.find(it->second.uid); u != per_uid_.end() && --u->second == 0) {
      per_uid_.erase(u);
    }
    conns_.erase(it);
    CloseDup(dup);
  }
}

void GrpcListener::AcceptOne() {
  // gRPC's endpoints expect non-blocking fds.
  UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!conn) {
    const int err = errno;
    UniqueFd taken;
    if (accept_guard_.OnAcceptError(listener_.get(), err, MonotonicNow(), &taken)) {
      StreamRelay* const relay = taken ? RelayFor(taken.get()) : nullptr;
      Refuse(std::move(taken), static_cast<uid_t>(-1), relay);
      // The waiting connection was closed (its client sees the end instead
      // of hanging); accepting pauses.
      LOG_EVERY_N(WARNING, 100) << "control socket: accept4: " << std::strerror(err)
                                << "; refusing connections for "
                                << absl::FormatDuration(AcceptGuard::kPause);
      return;
    }
    if (err != EAGAIN && err != ECONNABORTED && err != EINTR) {
      LOG_EVERY_N(WARNING, 100) << "control socket: accept4: " << std::strerror(err);
    }
    return;
  }
  // Through the relay when fds may reach it: before 6.16, or (a connection
  // made before Start on a socket handed in) queued before the listener
  // refused them. The option is set again for such a connection all the
  // same, for what it sends from now on.
  StreamRelay* const relay = RelayFor(conn.get());
  (void)RefuseIncomingFds(conn.get());
  ucred cred{};
  cred.uid = static_cast<uid_t>(-1);
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    Refuse(std::move(conn), cred.uid, relay);
    return;  // closed: no identity, no service
  }
  // Past its uid's rate: closed before anything costlier (ConnectRate).
  // Its refusal is charged as its bucket's (ConnectRate::RefusedAs):
  // ChargedUid has not looked yet.
  if (absl::Status rate = WithinRate(cred.uid); !rate.ok()) {
    RefuseSaying(std::move(conn), cred, connect_rate_.RefusedAs(cred.uid, MonotonicNow()), relay,
                 rate);
    return;
  }
  // Per-uid limits charge a user namespace's processes to its owner's uid
  // (ChargedUid), not to each subordinate uid; a connection whose process
  // is gone, or whose owner hallocd cannot tell (out of fds), is charged to
  // no one and not served.
  const absl::StatusOr<ChargedPeer> charged =
      PinAndCharge(conn.get(), cred, connect_rate_.subordinate_uids(MonotonicNow()));
  // Not charged: its refusal goes to its rate bucket's uid.
  const uid_t uid =
      charged.ok() ? charged->charged : connect_rate_.RefusedAs(cred.uid, MonotonicNow());
  absl::Status admit = absl::OkStatus();
  if (absl::IsNotFound(charged.status())) {
    admit = absl::FailedPreconditionError(
        absl::StrCat("pid ", cred.pid, " (uid ", cred.uid, ") exited before it was accepted"));
  } else if (!charged.ok()) {
    admit = charged.status();
  } else if (!connect_rate_.SameBucket(uid, cred.uid, MonotonicNow()) &&
             !(admit = WithinRate(uid)).ok()) {
    // A user namespace's process: its owner's rate too.
  } else if (const absl::Duration left = CutUntil(uid) - MonotonicNow();
             left > absl::ZeroDuration()) {
    admit = absl::ResourceExhaustedError(
        absl::StrCat("a control connection of uid ", uid,
                     " was cut (it left what hallocd sent it unread, or flooded it with "
                     "calls past its limit); its connections are refused for ",
                     absl::FormatDuration(left)));
  } else if (relay_ && relay_->OverLimit(uid)) {
    admit = absl::ResourceExhaustedError(absl::StrCat(
        "uid ", uid, " has fds it sent waiting to be closed (no gRPC call carries fds)"));
  } else {
    admit = admit_(uid, held(uid));
  }
  if (!admit.ok()) {
    RefuseSaying(std::move(conn), cred, uid, relay, admit);
    return;  // closed: the client sees the connection end
  }
  UniqueFd dup(::fcntl(conn.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup) {
    // Uncounted, so not served: the fd table is nearly full anyway.
    LOG_EVERY_N(WARNING, 100) << "control socket: dup: " << std::strerror(errno);
    Refuse(std::move(conn), uid, relay);
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLRDHUP;  // EPOLLHUP and EPOLLERR are always reported
  ev.data.fd = dup.get();
  if (::epoll_ctl(ends_.get(), EPOLL_CTL_ADD, dup.get(), &ev) != 0) {
    LOG_EVERY_N(WARNING, 100) << "control socket: epoll_ctl: " << std::strerror(errno);
    Refuse(std::move(conn), uid, relay);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    conns_.emplace(dup.get(), Conn{uid});
    ++per_uid_[uid];
  }
  (void)dup.release();  // conns_ owns it now
  if (relay != nullptr) {
    absl::StatusOr<UniqueFd> end = relay->Add(std::move(conn), uid);
    if (!end.ok()) {
      // Shut down: the duplicate sees the end and the count drops.
      LOG_EVERY_N(WARNING, 100) << "control socket: relay: " << end.status();
      return;
    }
    conn = *std::move(end);
  }
  // Under the number gRPC names the connection by ("fd:N"), before any
  // call on it can run.
  if (peers_) peers_->Set(conn.get(), cred, uid, charged->start);
  grpc::AddInsecureChannelFromFd(server_, conn.release());  // gRPC owns it now
}

}  // namespace halloc
