#include "service/broker.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/connection_limits.h"
#include "service/peer_identity.h"
#include "service/util/random.h"
#include "service/util/unix_listener.h"

namespace halloc {

absl::Duration Broker::verify_timeout = absl::Seconds(10);
bool Broker::follow_client_cpu = true;
bool Broker::refuse_fds_at_sender = true;
uint64_t Broker::max_unread_fds_per_uid = 0;
absl::Duration Broker::lone_pause = absl::Milliseconds(50);
absl::Duration Broker::inline_window = absl::Milliseconds(100);
absl::Duration Broker::inline_allowed = absl::Milliseconds(25);
absl::Duration Broker::parse_window = absl::Milliseconds(100);
absl::Duration Broker::parse_allowed = absl::Milliseconds(5);

namespace {

constexpr uint64_t kListenerKey = 0;
constexpr uint64_t kWakeKey = ~uint64_t{0};
constexpr uint64_t kForeignKey = ~uint64_t{0} - 1;
constexpr uint64_t kLaneKey = ~uint64_t{0} - 2;
constexpr uint64_t kRetiredKey = ~uint64_t{0} - 3;
// Stale handshake deadlines kept beyond the live handshakes' before a prune.
constexpr size_t kDeadlineSlack = 64;

}  // namespace

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(const std::string& path,
                                                      mode_t mode,
                                                      Allocator* core) {
  ASSIGN_OR_RETURN(BoundSocket bound, BindUnixSocket(path, SOCK_SEQPACKET, mode));
  return Launch(std::move(bound.fd), std::move(bound.file), core);
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Serve(UniqueFd listener,
                                                      const std::string& path,
                                                      Allocator* core) {
  int type = 0;
  int listening = 0;
  socklen_t type_len = sizeof(type);
  socklen_t listening_len = sizeof(listening);
  sockaddr_storage addr{};
  socklen_t addr_len = sizeof(addr);
  const bool ok =
      ::getsockopt(listener.get(), SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 &&
      ::getsockopt(listener.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening,
                   &listening_len) == 0 &&
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &addr_len) == 0;
  if (!ok || addr.ss_family != AF_UNIX || type != SOCK_SEQPACKET || !listening) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the broker socket passed for ", path,
        " is not a listening SOCK_SEQPACKET Unix socket"));
  }
  const int flags = ::fcntl(listener.get(), F_GETFL);
  if (flags < 0 || ::fcntl(listener.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK) on the passed broker socket");
  }
  return Launch(std::move(listener), SocketFile(), core);
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Launch(UniqueFd listener, SocketFile file,
                                                       Allocator* core) {
  // Every record a client sends is stamped with its sender. Set on the
  // listener so that records sent before accept() are stamped too (and
  // accepted sockets inherit it).
  const int on = 1;
  if (::setsockopt(listener.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
    return ErrnoStatus(errno, "setsockopt(SO_PASSCRED)");
  }
  // No request carries fds. Where the kernel can (6.16+), a client's
  // sendmsg with fds fails (EPERM), also before accept(). Elsewhere
  // OnReadable receives them (dropped by the kernel, their last release
  // would run on this thread: a lingering TCP socket's waits as long as
  // its sender likes) and foreign_fds_ closes them on its own thread (a
  // FUSE file's flush at close waits for its server).
  if (refuse_fds_at_sender) {
    if (absl::Status s = RefuseIncomingFds(listener.get());
        !s.ok() && !absl::IsUnimplemented(s)) {
      return s;
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ForeignFds> foreign_fds,
                   ForeignFds::Create(kMaxForeignFdsPerUid, kMaxForeignFds));
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoStatus(errno, "eventfd");
  ASSIGN_OR_RETURN(AcceptGuard accept_guard, AcceptGuard::Create());
  for (auto [fd, key] : {std::pair{listener.get(), kListenerKey},
                         std::pair{wake.get(), kWakeKey},
                         std::pair{foreign_fds->ready_fd(), kForeignKey}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoStatus(errno, "epoll_ctl(ADD)");
    }
  }
  std::unique_ptr<Broker> broker(new Broker(core, std::move(listener),
                                            std::move(epoll), std::move(wake),
                                            std::move(accept_guard), std::move(foreign_fds),
                                            std::move(file)));
  broker->follow_cpu_ = follow_client_cpu;
  broker->refuse_fds_ = refuse_fds_at_sender;
  epoll_event lane{};
  lane.events = EPOLLIN;
  lane.data.u64 = kLaneKey;
  if (!broker->lane_done_ ||
      ::epoll_ctl(broker->epoll_.get(), EPOLL_CTL_ADD, broker->lane_done_.get(), &lane) != 0) {
    return ErrnoStatus(errno, "slow lane eventfd");
  }
  epoll_event retired{};
  retired.events = EPOLLIN;
  retired.data.u64 = kRetiredKey;
  if (!*broker->retired_wake_ || ::epoll_ctl(broker->epoll_.get(), EPOLL_CTL_ADD,
                                             broker->retired_wake_->get(), &retired) != 0) {
    return ErrnoStatus(errno, "retired connections eventfd");
  }
  broker->unread_fds_->OnRetire([wake = broker->retired_wake_] {
    const uint64_t one = 1;
    (void)!::write(wake->get(), &one, sizeof(one));
  });
  broker->thread_ = std::thread([b = broker.get()] { b->Run(); });
  return broker;
}

Broker::Broker(Allocator* core, UniqueFd listener, UniqueFd epoll, UniqueFd wake,
               AcceptGuard accept_guard, std::unique_ptr<ForeignFds> foreign_fds, SocketFile file)
    : core_(core),
      listener_(std::move(listener)),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)),
      accept_guard_(std::move(accept_guard)),
      file_(std::move(file)),
      unread_fds_(std::make_shared<UnreadFds>(
          max_unread_fds_per_uid > 0 ? max_unread_fds_per_uid : UnreadFds::DefaultPerUid(),
          UnreadFds::DefaultTotal())),
      retired_wake_(std::make_shared<UniqueFd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))),
      foreign_fds_(std::move(foreign_fds)),
      inline_budget_(inline_window, inline_allowed),
      parse_budget_(parse_window, parse_allowed),
      log_limit_(10, absl::Seconds(1), /*per_uid=*/3),
      lane_done_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      slow_lane_(
          std::make_unique<WorkQueue>(kSlowLaneQueue, kSlowLanePerUid, [this] { LaneDone(); })),
      revoke_lane_(
          std::make_unique<WorkQueue>(kSlowLaneQueue, kSlowLanePerUid, [this] { LaneDone(); })) {}

void Broker::LaneDone() {
  const uint64_t one = 1;  // a place is free: room for a held request, maybe
  (void)!::write(lane_done_.get(), &one, sizeof(one));
}

Broker::~Broker() { Stop(); }

void Broker::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    PLOG(ERROR) << "broker: cannot wake the broker thread";
  }
  if (thread_.joinable()) thread_.join();
  slow_lane_.reset();  // drops what waits; the allocation being made ends first
  revoke_lane_.reset();
  if (held_cpu_.load(std::memory_order_relaxed) >= 0) ServingCpu().store(-1);
  std::vector<uint64_t> keys;
  for (const auto& [key, c] : conns_) keys.push_back(key);
  for (uint64_t key : keys) Close(key);
  file_.Remove();
}

void Broker::Warn(absl::string_view kind, const std::string& line) {
  uint64_t dropped = 0;
  if (log_limit_.Allow(kind, &dropped)) {
    LOG(WARNING) << "broker: " << line << LogLimiter::Dropped(dropped);
  }
}

void Broker::Warn(absl::string_view kind, uid_t uid, const std::string& line) {
  uint64_t dropped = 0;
  if (log_limit_.AllowFor(kind, uid, &dropped)) {
    LOG(WARNING) << "broker: " << line << LogLimiter::Dropped(dropped);
  }
}

void Broker::Run() {
  if (follow_cpu_) follower_.emplace(CpuFollower::ForThisThread());
  epoll_event events[64];
  for (;;) {
    // Wake up now and then while handshakes may expire, accepting waits or
    // connections that ended keep fds unread (UnreadFds::Sweep).
    // Retired connections are counted afresh: a Close in the last turn may
    // have retired one after that turn's sweep (or without one, within
    // 100 ms of the last), which a count kept from the sweep would miss,
    // leaving its socket open until some other event.
    int timeout = (handshakes_ > 0 || !accepting_ || unread_fds_->retired() > 0) ? 100 : -1;
    // Held on a lone client's CPU: let go once it pauses (its CPU is no
    // longer where hallocd serves from).
    const bool held = follower_ && follower_->held() >= 0;
    if (held) {
      const int pause = static_cast<int>(absl::ToInt64Milliseconds(lone_pause));
      timeout = timeout < 0 ? pause : std::min(timeout, pause);
    }
    if (!parse_paused_.empty()) {
      const int resume = ResumeParsed(MonotonicNow());
      if (resume >= 0) timeout = timeout < 0 ? resume : std::min(timeout, resume);
    }
    const int n = ::epoll_wait(epoll_.get(), events, 64, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      PLOG(ERROR) << "broker: epoll_wait";
      return;
    }
    if (n == 0 && held) {
      lone_requests_ = 0;
      follower_->LetGo();
      Publish();
    }
    clients_this_turn_ = 0;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      clients_this_turn_ += key != kListenerKey && key != kWakeKey && key != kForeignKey &&
                            key != kLaneKey && key != kRetiredKey;
    }
    if (clients_this_turn_ > 1 && follower_) {
      lone_requests_ = 0;
      follower_->LetGo();
      Publish();
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == kWakeKey) return;
      if (key == kListenerKey) {
        Accept();
      } else if (key == kForeignKey) {
        foreign_fds_->Acknowledge();
        ResumeCleared();
      } else if (key == kRetiredKey) {
        uint64_t n = 0;
        (void)!::read(retired_wake_->get(), &n, sizeof(n));  // next turn: swept
      } else if (key == kLaneKey) {
        uint64_t done = 0;
        (void)!::read(lane_done_.get(), &done, sizeof(done));
        RetryHeld();
      } else {
        OnReadable(key);
      }
    }
    // Too many foreign fds wait to be closed: no new connections (each could
    // end with more queued) until some are.
    if (accepting_ && foreign_fds_->Full()) {
      StopAccepting();
      Warn("foreign-full", absl::StrCat(Broker::kMaxForeignFds,
                                        " fds sent by clients wait to be closed: not "
                                        "accepting connections until some are"));
    }
    if (!accepting_ && !accept_guard_.Paused(MonotonicNow()) && !foreign_fds_->Full()) {
      ResumeAccepting();
    }
    if (!deadlines_.empty()) ExpireHandshakes();
    if (const absl::Time now = MonotonicNow(); now >= next_sweep_) {
      unread_fds_->Sweep();
      next_sweep_ = now + absl::Milliseconds(100);
    }
  }
}

void Broker::Publish() {
  const int held = follower_->held();
  if (held == held_cpu_.load(std::memory_order_relaxed)) return;
  held_cpu_.store(held, std::memory_order_relaxed);
  ServingCpu().store(held, std::memory_order_relaxed);
}

void Broker::StopAccepting() {
  if (!accepting_) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
  accepting_ = false;
}

void Broker::ResumeAccepting() {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerKey;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) != 0) {
    PLOG(ERROR) << "broker: epoll_ctl(ADD listener)";
    accept_guard_.Pause(MonotonicNow());
    return;
  }
  accepting_ = true;
}

bool Broker::RateAdmits(const ConnectRate::Limits& limits, uid_t uid, const ucred& cred,
                        UniqueFd& conn) {
  absl::Duration retry = absl::ZeroDuration();
  const absl::Time now = MonotonicNow();
  const absl::Status rate = connect_rate_.Admit(limits, uid, now, "broker connections", &retry);
  if (rate.ok()) return true;
  rate_limited_.fetch_add(1, std::memory_order_relaxed);
  // At the first check (the kernel's uid) ChargedUid has not looked yet:
  // the refusal is charged as its bucket's uid (RefusedAs).
  const uid_t charged = uid == cred.uid ? connect_rate_.RefusedAs(uid, now) : uid;
  RefuseAtAccept(std::move(conn), cred, charged, rate, retry);
  return false;
}

void Broker::RefuseAtAccept(UniqueFd conn, const ucred& cred, uid_t charged,
                            const absl::Status& why, absl::Duration retry_after) {
  v1::BrokerFrame frame;
  *frame.mutable_reply() = ErrorReply(0, why);
  if (retry_after > absl::ZeroDuration()) {
    frame.mutable_reply()->set_retry_after_ms(static_cast<uint32_t>(std::min<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(retry_after, absl::Milliseconds(1))), 60000)));
  }
  (void)SendRecord(conn.get(), frame.SerializeAsString(), {}, true);
  Warn("refused", charged,
       absl::StrCat("refused pid ", cred.pid, " uid ", cred.uid,
                    charged != cred.uid ? absl::StrCat(" (of uid ", charged, ")") : std::string(),
                    ": ", why.message()));
  CloseSocket(0, charged, std::move(conn));
}

absl::Status Broker::Admit(uid_t uid) const {
  auto it = conns_per_uid_.find(uid);
  // Ended connections whose peers have not read what was sent on them keep
  // their socket open in UnreadFds: they count until drained.
  const uint32_t mine =
      (it == conns_per_uid_.end() ? 0 : it->second) + unread_fds_->retired(uid);
  const uint32_t all = conns_.size() + unread_fds_->retired();
  if (foreign_fds_->OverLimit(uid)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "uid ", uid, " has ", foreign_fds_->waiting_of(uid),
        " fds it sent hallocd waiting to be closed (no request carries fds)"));
  }
  return AdmitConnection(*core_->policy(), uid, {mine, all},
                         "connections to hallocd (ended ones with fds unread included)");
}

void Broker::Accept() {
  UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) {
    const int err = errno;
    UniqueFd taken;
    if (accept_guard_.OnAcceptError(listener_.get(), err, MonotonicNow(), &taken)) {
      // Out of fds: the waiting connection is closed (its client sees the
      // end instead of hanging); stop accepting for a moment, not spin.
      ucred peer{};
      peer.uid = static_cast<uid_t>(-1);
      socklen_t peer_len = sizeof(peer);
      ::getsockopt(taken.get(), SOL_SOCKET, SO_PEERCRED, &peer, &peer_len);
      CloseSocket(0, peer.uid, std::move(taken));
      StopAccepting();
      Warn("accept-fds",
           absl::StrCat("out of fds: accept4: ", std::strerror(err), "; refusing connections for ",
                        absl::FormatDuration(AcceptGuard::kPause)));
    } else if (err != EAGAIN && err != ECONNABORTED && err != EINTR) {
      Warn("accept", absl::StrCat("accept4: ", std::strerror(err)));
    }
    return;
  }
  ucred cred{};
  cred.uid = static_cast<uid_t>(-1);
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    Warn("peercred", absl::StrCat("getsockopt(SO_PEERCRED): ", std::strerror(errno)));
    CloseSocket(0, cred.uid, std::move(conn));
    return;
  }
  // A uid past its rate is told so before anything costlier is done for
  // its connection (ConnectRate).
  const ConnectRate::Limits rate = ConnectRate::Of(*core_->policy());
  if (!RateAdmits(rate, cred.uid, cred, conn)) return;
  // A connection made before the listener was set to refuse fds (while
  // systemd held the socket) took SO_PASSRIGHTS on from it: turn it off
  // here too (6.16+; before, records with fds are taken and closed off
  // this thread, TakeForeignFds).
  if (refuse_fds_) (void)RefuseIncomingFds(conn.get());
  // Stamp every record from here on, whatever the listener had when this
  // connection was made (since Linux 6.16 a connection takes SO_PASSCRED
  // from the listener at connect(), so a socket passed in without it would
  // leave its first connection unstamped).
  const int on = 1;
  if (::setsockopt(conn.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
    Warn("passcred", absl::StrCat("setsockopt(SO_PASSCRED): ", std::strerror(errno)));
    CloseSocket(0, cred.uid, std::move(conn));
    return;
  }
  // Per-uid limits are charged to the uid a user namespace's processes
  // belong to (their owner's), not to each subordinate uid.
  absl::StatusOr<ChargedPeer> charge =
      PinAndCharge(conn.get(), cred, connect_rate_.subordinate_uids(MonotonicNow()),
                   /*look_at_maps=*/true);
  if (absl::IsResourceExhausted(charge.status())) {
    // Out of fds to pin it or tell whose it is (charged as itself, one of a
    // user's subordinate uids would dodge its owner's limits): the same
    // pause as an accept4 out of fds, not a turn per queued connection.
    // Not charged: its refusal goes to its rate bucket's uid.
    CloseSocket(0, connect_rate_.RefusedAs(cred.uid, MonotonicNow()), std::move(conn));
    accept_guard_.Pause(MonotonicNow());
    StopAccepting();
    Warn("accept-fds", absl::StrCat(charge.status().message(), "; refusing connections for ",
                                    absl::FormatDuration(AcceptGuard::kPause)));
    return;
  }
  if (!charge.ok()) {
    // No uid it could be charged to for sure (one of a user's subordinate
    // uids, say): its rate bucket's uid.
    const uid_t refused_as = connect_rate_.RefusedAs(cred.uid, MonotonicNow());
    if (!absl::IsNotFound(charge.status())) {  // whose it is cannot be told: told why
      RefuseAtAccept(std::move(conn), cred, refused_as, charge.status());
      return;
    }
    // Gone: nobody to serve.
    Warn("refused", refused_as,
         absl::StrCat("refused pid ", cred.pid, " uid ", cred.uid,
                      ": it exited before it was accepted"));
    CloseSocket(0, refused_as, std::move(conn));
    return;
  }
  const uid_t charged = charge->charged;
  // A user namespace's process counts against its owner's rate too.
  if (!connect_rate_.SameBucket(charged, cred.uid, MonotonicNow()) &&
      !RateAdmits(rate, charged, cred, conn)) {
    return;
  }
  if (absl::Status admit = Admit(charged); !admit.ok()) {
    RefuseAtAccept(std::move(conn), cred, charged, admit);
    return;
  }
  auto c = std::make_unique<Conn>();
  c->key = next_key_++;
  c->peer = cred;
  c->charged_uid = charged;
  c->maps_hallocd_uid = charge->maps_hallocd_uid;
  c->pidfd = SharedFd(std::move(charge->pidfd));
  c->start = charge->start;
  ExeSample exe = SampleExe(c->pidfd.get(), cred.pid);
  c->exe = std::move(exe.path);
  c->exe_file = exe.file;
  c->challenge = RandomBytes(16);
  c->deadline = MonotonicNow() + verify_timeout;
  c->channel = std::make_shared<SocketFdChannel>(std::move(conn), charged, unread_fds_);
  // The challenge goes out only now, after the executable was read.
  v1::BrokerFrame frame;
  v1::Hello* hello = frame.mutable_hello();
  hello->set_version(kBrokerProtocolVersion);
  hello->set_challenge(c->challenge);
  hello->set_uid(cred.uid);
  hello->set_gid(cred.gid);
  hello->set_pid(cred.pid);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = c->key;
  absl::Status status = SendRecord(c->sock(), frame.SerializeAsString(), {}, true);
  // A uid whose sent fds wait to be closed, over the limit, or past its
  // parse share: not read yet.
  c->paused = foreign_fds_->OverLimit(charged) || ParsePaused(charged);
  if (status.ok() && !c->paused &&
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->sock(), &ev) != 0) {
    status = ErrnoStatus(errno, "epoll_ctl(ADD)");
  }
  if (!status.ok()) {
    Warn("hello", charged,
         absl::StrCat("connection of pid ", cred.pid, " failed to start: ", status.message()));
    EndShared(0, charged, c->sock());
    return;
  }
  if (c->paused) paused_.insert(c->key);
  ++conns_per_uid_[charged];
  ++handshakes_;
  deadlines_.emplace(c->deadline, c->key);
  conns_.emplace(c->key, std::move(c));
  if (deadlines_.size() > 2 * handshakes_ + kDeadlineSlack) PruneDeadlines();
  queued_deadlines_.store(deadlines_.size(), std::memory_order_relaxed);
}

// Amortized: it runs once the queue holds twice the live handshakes (plus
// some slack), and leaves it holding only theirs.
void Broker::PruneDeadlines() {
  std::vector<std::pair<absl::Time, uint64_t>> live;
  live.reserve(handshakes_);
  for (; !deadlines_.empty(); deadlines_.pop()) {
    const auto& top = deadlines_.top();
    auto it = conns_.find(top.second);
    if (it != conns_.end() && !it->second->session) live.push_back(top);
  }
  deadlines_ = decltype(deadlines_)(std::greater<>(), std::move(live));
}

// Looks only at the deadlines that passed (earliest first), not at every
// connection: one connection that never verifies must not make each turn
// of Run cost as much as all the sessions.
void Broker::ExpireHandshakes() {
  const absl::Time now = MonotonicNow();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    const uint64_t key = deadlines_.top().second;
    deadlines_.pop();
    auto it = conns_.find(key);
    if (it == conns_.end() || it->second->session) continue;  // closed, or verified
    Warn("unverified", it->second->charged_uid,
         absl::StrCat("closed the connection of pid ", it->second->peer.pid, " uid ",
                      it->second->peer.uid, ": not verified within ",
                      absl::FormatDuration(verify_timeout)));
    Close(key);
  }
}

bool Broker::Verify(Conn& conn, const ucred& sender, const v1::BrokerRequest& req) {
  if (conn.session) {
    Reply(conn, ErrorReply(req.request_id(),
                           absl::FailedPreconditionError("session already verified")));
    return true;
  }
  absl::Status refused;
  if (req.verify().challenge() != conn.challenge) {
    refused = absl::PermissionDeniedError("wrong challenge");
  } else if (sender.pid != conn.peer.pid) {
    refused = absl::PermissionDeniedError(absl::StrCat(
        "the session must be verified by the process that connected (pid ",
        conn.peer.pid, "), not by pid ", sender.pid));
  } else if (!StillRunning(conn.pidfd.get())) {
    // The pid is the connector's no more: it exited, and whoever holds the
    // socket now may have been given its pid (cycling pids, within the
    // verify timeout) to open a session as the connector's uid.
    refused = absl::PermissionDeniedError(
        absl::StrCat("the process that connected (pid ", conn.peer.pid,
                     ") exited before verifying; its pid is another process's now"));
  }
  if (!refused.ok()) {
    Reply(conn, ErrorReply(req.request_id(), refused));
    Warn("verify", conn.charged_uid,
         absl::StrCat("closed the connection of pid ", conn.peer.pid, " uid ", conn.peer.uid, ": ",
                      refused.message()));
    Close(conn.key);
    return false;
  }
  // Still the same file as before the challenge went out: then the code
  // that answered is that file's.
  ExeSample now = SampleExe(conn.pidfd.get(), conn.peer.pid);
  Identity id{conn.peer.uid, conn.peer.gid, conn.peer.pid, now.path, std::nullopt};
  id.account_uid = conn.charged_uid;  // every request on it pays as it does
  id.maps_hallocd_uid = conn.maps_hallocd_uid;
  if (conn.exe_file && now.file == conn.exe_file) id.exe_file = conn.exe_file;
  absl::StatusOr<std::shared_ptr<Session>> session =
      core_->OpenSession(id, conn.channel, SessionProcess{conn.pidfd, conn.start});
  if (!session.ok()) {
    Warn("open", conn.charged_uid,
         absl::StrCat("refused pid ", conn.peer.pid, ": ", session.status().message()));
    Close(conn.key);
    return false;
  }
  conn.session = *std::move(session);
  --handshakes_;
  v1::BrokerReply reply;
  reply.set_request_id(req.request_id());
  v1::Welcome* welcome = reply.mutable_welcome();
  welcome->set_session_id(conn.session->id());
  welcome->set_session_token(conn.session->token());
  welcome->set_import_call_ids(true);
  welcome->set_allocate_call_ids(true);
  welcome->set_broker_import(true);
  welcome->set_import_references(true);
  welcome->set_hold_generations(true);
  welcome->set_live_revoke(core_->backend().CanRevokeLive());
  welcome->set_broker_share(true);
  welcome->set_broker_revoke(true);
  welcome->set_broker_metadata(true);
  welcome->set_broker_is_supported(true);
  if (id.exe_file) welcome->set_exe(Utf8OrEscaped(id.exe));
  Reply(conn, std::move(reply));
  uint64_t dropped = 0;
  if (log_limit_.AllowFor("opened", conn.charged_uid, &dropped)) {
    LOG(INFO) << "session " << conn.session->id() << " opened: pid " << id.pid << " uid " << id.uid
              << " gid " << id.gid << " exe '" << LogSafe(id.exe, kLoggedPathBytes) << "'"
              << (id.exe_file ? "" : " (not verified)") << LogLimiter::Dropped(dropped);
  }
  return true;
}

void Broker::Close(uint64_t key) {
  auto it = conns_.find(key);
  if (it == conns_.end()) return;
  std::unique_ptr<Conn> c = std::move(it->second);
  conns_.erase(it);
  if (c->paused) {
    paused_.erase(key);
  } else {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->sock(), nullptr);
  }
  // The channel (its socket) may outlive this in the session's users.
  EndShared(key, c->charged_uid, c->sock());
  if (auto u = conns_per_uid_.find(c->charged_uid); u != conns_per_uid_.end()) {
    if (--u->second == 0) conns_per_uid_.erase(u);
  }
  if (!c->session) {
    --handshakes_;
    return;
  }
  const uint64_t id = c->session->id();
  c->session.reset();
  core_->CloseSession(id);
  uint64_t dropped = 0;
  if (log_limit_.AllowFor("closed", c->charged_uid, &dropped)) {
    LOG(INFO) << "session " << id << " closed (pid " << c->peer.pid << " uid "
              << c->peer.uid << ")" << LogLimiter::Dropped(dropped);
  }
}

namespace {

// Its peer sees the end now, even while foreign_fds_ drains it (what was
// sent stays readable), and can queue nothing more; true when records with
// fds are still queued (StopReceiving).
bool EndConnection(int sock) {
  ::shutdown(sock, SHUT_WR);
  return StopReceiving(sock);
}

}  // namespace

void Broker::CloseSocket(uint64_t key, uid_t uid, UniqueFd sock) {
  if (sock && EndConnection(sock.get())) foreign_fds_->Drain(key, uid, std::move(sock));
}

void Broker::EndShared(uint64_t key, uid_t uid, int sock) {
  if (!EndConnection(sock)) return;
  // Out of fds for that reference: what is queued goes with the socket's
  // last reference.
  if (UniqueFd ref(::fcntl(sock, F_DUPFD_CLOEXEC, 0)); ref) {
    foreign_fds_->Drain(key, uid, std::move(ref));
  }
}

}  // namespace halloc
