#include "service/stream_relay.h"

#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/h2_guard.h"
#include "service/util/clock.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

// epoll keys: a pipe's key shifted left, its low bit the side (1: client).
constexpr uint64_t kWakeKey = 0;
constexpr uint64_t kForeignKey = 1;

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter();
  return *limiter;
}

// One recvmsg of at most StreamRelay::kChunk bytes, with room for every fd
// a record may carry: bytes read (0: end), or -errno. `fds` gets any.
ssize_t ReceiveChunk(int fd, std::string& into, std::vector<UniqueFd>& fds) {
  into.resize(StreamRelay::kChunk);
  Ancillary got;
  const ssize_t n = ReceiveMessage(fd, absl::MakeSpan(into.data(), into.size()), MSG_DONTWAIT,
                                   kKernelMaxFdsPerRecord, got);
  for (UniqueFd& one : got.fds) fds.push_back(std::move(one));
  into.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return n;
}

// Writes what it can of `from` to `fd` and drops that much: false on an
// error other than a full socket.
bool Flush(int fd, std::string& from) {
  while (!from.empty()) {
    const ssize_t n = ::send(fd, from.data(), from.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      from.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && errno == EAGAIN;
  }
  return true;
}

}  // namespace

struct StreamRelay::Pipe {
  uint64_t key;
  uid_t uid;
  UniqueFd client;
  UniqueFd server;  // ours of the pair; gRPC has the other end
  std::string to_server, to_client;  // read, not yet written
  bool client_eof = false, server_eof = false;
  bool client_shut = false, server_shut = false;  // our SHUT_WR sent
  // That end hung up: nothing more reaches it, what it queued before is
  // passed on.
  bool client_gone = false, server_gone = false;
  bool paused = false;  // fds it sent wait to be closed
  H2Guard guard;        // the client's frames
  uint32_t client_events = ~0u, server_events = ~0u;  // as watched now
};

absl::StatusOr<std::unique_ptr<StreamRelay>> StreamRelay::Start(absl::Duration linger) {
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoStatus(errno, "eventfd");
  ASSIGN_OR_RETURN(std::unique_ptr<ForeignFds> foreign,
                   ForeignFds::Create(kMaxForeignFdsPerUid, kMaxForeignFds));
  for (auto [fd, key] : {std::pair{wake.get(), kWakeKey},
                         std::pair{foreign->ready_fd(), kForeignKey}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoStatus(errno, "epoll_ctl(ADD)");
    }
  }
  std::unique_ptr<StreamRelay> r(
      new StreamRelay(std::move(epoll), std::move(wake), std::move(foreign), linger));
  r->thread_ = std::thread([p = r.get()] { p->Run(); });
  return r;
}

StreamRelay::StreamRelay(UniqueFd epoll, UniqueFd wake, std::unique_ptr<ForeignFds> foreign,
                         absl::Duration linger)
    : epoll_(std::move(epoll)),
      wake_(std::move(wake)),
      foreign_(std::move(foreign)),
      linger_(linger) {}

StreamRelay::~StreamRelay() { Stop(); }

void StreamRelay::Stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) PLOG(ERROR) << "relay: wake";
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<UniqueFd> StreamRelay::Add(UniqueFd client, uid_t uid) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
    absl::Status s = ErrnoStatus(errno, "socketpair");
    Discard(std::move(client), uid);  // ended here, queued fds and all
    return s;
  }
  UniqueFd ours(sv[0]), grpc_end(sv[1]);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      incoming_.push_back(Incoming{std::move(client), UniqueFd(), uid});
      return absl::UnavailableError("the relay is stopping");
    }
    incoming_.push_back(Incoming{std::move(client), std::move(ours), uid});
    ++relayed_;
  }
  const uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  return grpc_end;
}

void StreamRelay::Discard(UniqueFd client, uid_t uid) {
  {
    absl::MutexLock lock(&mu_);
    incoming_.push_back(Incoming{std::move(client), UniqueFd(), uid});
  }
  const uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

size_t StreamRelay::relayed() const {
  absl::MutexLock lock(&mu_);
  return relayed_;
}

void StreamRelay::Run() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_.get(), events, 64, EndLingered());
    if (n < 0) {
      if (errno == EINTR) continue;
      PLOG(ERROR) << "relay: epoll_wait";
      break;
    }
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == kWakeKey) {
        uint64_t v;
        (void)!::read(wake_.get(), &v, sizeof(v));
        Adopt();
        absl::MutexLock lock(&mu_);
        stop = stopping_;
      } else if (key == kForeignKey) {
        foreign_->Acknowledge();
        ResumeCleared();
      } else {
        OnEvent(key >> 1, (key & 1) != 0, events[i].events);
      }
    }
    if (stop) break;
  }
  std::vector<uint64_t> keys;
  for (const auto& [key, p] : pipes_) keys.push_back(key);
  for (uint64_t key : keys) End(key);
  Adopt();  // discards what came meanwhile (no new pipes once stopping)
}

int StreamRelay::EndLingered() {
  while (!lingering_.empty()) {
    const auto [deadline, key] = lingering_.front();
    const absl::Duration left = deadline - MonotonicNow();
    if (left > absl::ZeroDuration()) {
      // Rounded up: woken early, it would only wait again.
      return static_cast<int>(
          absl::ToInt64Milliseconds(left + absl::Milliseconds(1) - absl::Nanoseconds(1)));
    }
    lingering_.pop_front();
    End(key);  // what that end left and the other did not take is dropped
  }
  return -1;
}

void StreamRelay::Adopt() {
  std::vector<Incoming> in;
  bool stopping;
  {
    absl::MutexLock lock(&mu_);
    in.swap(incoming_);
    stopping = stopping_;
  }
  // Budgets of uids with no pipe left that have filled up again: gone (at
  // most once a second, so that a burst of connections costs no sweep each).
  if (const absl::Time now = MonotonicNow(); now >= next_sweep_) {
    next_sweep_ = now + absl::Seconds(1);
    absl::erase_if(resets_, [now](const auto& entry) {
      const ResetBudget& b = entry.second;
      return b.pipes <= 0 && b.tokens.Level(now, kResetsPerSecond, kResetBurst) >= kResetBurst;
    });
  }
  for (Incoming& i : in) {
    const uint64_t key = next_key_++;
    if (!i.server || stopping) {
      Finish(std::move(i.client), key, i.uid);
      if (i.server) {
        absl::MutexLock lock(&mu_);
        --relayed_;
      }
      continue;
    }
    auto p = std::make_unique<Pipe>();
    p->key = key;
    p->uid = i.uid;
    p->client = std::move(i.client);
    p->server = std::move(i.server);
    // Out-of-band bytes are read with the rest: skipped, the kernel would
    // drop one with its fds here.
    const int on = 1;
    ::setsockopt(p->client.get(), SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
    // A uid with too many fds waiting: not read yet.
    p->paused = foreign_->OverLimit(i.uid);
    ++resets_[i.uid].pipes;
    Pipe& pipe = *p;
    pipes_.emplace(key, std::move(p));
    if (Pump(pipe)) Watch(pipe);
  }
}

void StreamRelay::OnEvent(uint64_t key, bool client_side, uint32_t events) {
  auto it = pipes_.find(key);
  if (it == pipes_.end()) return;
  Pipe& p = *it->second;
  // That end is gone (closed, or shut down both ways; EPOLLERR: it left
  // something of ours unread): nothing more can reach it, and the other
  // end's bytes are not read any more. What it sent before is still
  // queued, its error reported after: passed on within the linger.
  if (events & (EPOLLHUP | EPOLLERR)) Gone(p, client_side);
  if (Pump(p)) Watch(p);
}

void StreamRelay::Gone(Pipe& p, bool client_side) {
  bool& gone = client_side ? p.client_gone : p.server_gone;
  if (gone) return;
  gone = true;
  (client_side ? p.to_client : p.to_server).clear();
  lingering_.emplace_back(MonotonicNow() + linger_, p.key);
}

namespace {

// How one direction's step went.
enum class Stepped {
  kOk,
  kFromFailed,  // reading the source failed: the pipe ends
  kToGone,      // writing the destination failed (EPIPE, ECONNRESET): it is gone
};

// One direction of a pipe: reads a chunk from `from` into `buf` when `buf`
// is empty, `from` has not ended and `may_read`; writes what it can of
// `buf` to `to`; shuts `to`'s writing side once `from` ended and `buf` is
// empty. Fds that came with the chunk go to `fds`; `moved` is set when
// anything moved.
// `inspect`, where given, reads each chunk first: one it refuses is not
// passed on, and the pipe ends.
Stepped Step(int from, int to, std::string& buf, bool& from_eof, bool& to_shut, bool may_read,
             std::string& chunk, std::vector<UniqueFd>& fds, bool& moved,
             const std::function<absl::Status(absl::string_view)>& inspect = nullptr) {
  if (buf.empty() && !from_eof && may_read) {
    const ssize_t n = ReceiveChunk(from, chunk, fds);
    if (n > 0 && inspect && !inspect(chunk).ok()) return Stepped::kFromFailed;
    if (n > 0) {
      buf.swap(chunk);
      moved = true;
    } else if (n == 0) {
      from_eof = moved = true;
    } else if (n != -EAGAIN) {
      return Stepped::kFromFailed;
    }
  }
  if (!buf.empty()) {
    const size_t before = buf.size();
    if (!Flush(to, buf)) return Stepped::kToGone;
    moved |= buf.size() != before;
  }
  if (from_eof && buf.empty() && !to_shut) {
    ::shutdown(to, SHUT_WR);
    to_shut = true;
  }
  return Stepped::kOk;
}

}  // namespace

bool StreamRelay::Pump(Pipe& p) {
  std::string chunk;
  for (int round = 0; round < 4; ++round) {
    bool moved = false;
    bool ok = true;
    // A destination that refuses a write is gone, as on its hang-up (which
    // may not have been seen yet): what the other end sent still goes on.
    if (!p.server_gone) {  // the client's bytes, while gRPC is there
      std::vector<UniqueFd> fds;
      const Stepped s =
          Step(p.client.get(), p.server.get(), p.to_server, p.client_eof, p.server_shut, !p.paused,
               chunk, fds, moved, [&](absl::string_view bytes) { return Guard(p, bytes); });
      if (!fds.empty()) TakeForeign(p, std::move(fds));
      if (s == Stepped::kToGone) Gone(p, /*client_side=*/false);
      ok = s != Stepped::kFromFailed;
    }
    if (ok && !p.client_gone) {    // gRPC's, while the client is there
      std::vector<UniqueFd> none;  // gRPC sends none
      const Stepped s = Step(p.server.get(), p.client.get(), p.to_client, p.server_eof,
                             p.client_shut, true, chunk, none, moved);
      if (s == Stepped::kToGone) Gone(p, /*client_side=*/true);
      ok = s != Stepped::kFromFailed;
    }
    // Over: on a read error (a gone end's comes once its bytes are read),
    // or once each direction still open has passed its end on. The bytes
    // written last wait in the destination's queue: closing ours drops
    // none of them.
    const bool to_server_done = p.server_gone || (p.client_eof && p.to_server.empty());
    const bool to_client_done = p.client_gone || (p.server_eof && p.to_client.empty());
    if (!ok || (to_server_done && to_client_done)) {
      End(p.key);
      return false;
    }
    if (!moved) break;
  }
  return true;
}

absl::Status StreamRelay::Guard(Pipe& p, absl::string_view bytes) {
  absl::StatusOr<uint32_t> resets = p.guard.Feed(bytes);
  absl::Status s = resets.status();
  if (resets.ok() && *resets > 0) {
    TokenBucket& b = resets_[p.uid].tokens;
    b.Refill(MonotonicNow(), kResetsPerSecond, kResetBurst);
    b.tokens -= *resets;
    if (b.tokens < 0) {
      s = absl::ResourceExhaustedError(absl::StrCat("more HTTP/2 stream resets than ",
                                                    kResetsPerSecond, " a second (", kResetBurst,
                                                    " at once) from its uid's connections"));
    }
  }
  if (uint64_t dropped; !s.ok() && Limiter().Allow("control-h2", &dropped)) {
    LOG(WARNING) << "control socket: uid " << p.uid << ": " << s.message() << "; connection ended"
                 << LogLimiter::Dropped(dropped);
  }
  return s;
}

void StreamRelay::TakeForeign(Pipe& p, std::vector<UniqueFd> fds) {
  const uid_t uid = p.uid;
  foreign_->Close(p.key, uid, std::move(fds));
  p.paused = true;
  if (!foreign_->OverLimit(uid)) return;
  if (uint64_t dropped; Limiter().Allow("control-foreign", &dropped)) {
    LOG(WARNING) << "control socket: uid " << uid << " has " << foreign_->waiting_of(uid)
                 << " fds it sent waiting to be closed: not reading any of its "
                    "connections until they are"
                 << LogLimiter::Dropped(dropped);
  }
  for (auto& [key, other] : pipes_) {
    if (other->uid == uid) other->paused = true;
  }
}

void StreamRelay::Watch(Pipe& p) {
  const bool read_client = p.to_server.empty() && !p.client_eof && !p.paused && !p.server_gone;
  const bool read_server = p.to_client.empty() && !p.server_eof && !p.client_gone;
  uint32_t client = (read_client ? EPOLLIN : 0) | (p.to_client.empty() ? 0 : EPOLLOUT);
  uint32_t server = (read_server ? EPOLLIN : 0) | (p.to_server.empty() ? 0 : EPOLLOUT);
  // A gone end reports its hang-up whatever it is asked for: watched only
  // while it is to be read (the hang-up reads as readable: bytes, then the
  // end), not at all otherwise.
  constexpr uint32_t kUnwatched = ~0u;
  if (p.client_gone && client == 0) client = kUnwatched;
  if (p.server_gone && server == 0) server = kUnwatched;
  auto set = [&](int fd, uint32_t want, uint32_t& now, uint64_t side) {
    if (want == now) return;
    if (want == kUnwatched) {
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr) != 0) {
        PLOG(ERROR) << "relay: epoll_ctl(DEL)";
        return;
      }
      now = kUnwatched;
      return;
    }
    epoll_event ev{};
    ev.events = want;  // EPOLLHUP and EPOLLERR come anyway
    ev.data.u64 = p.key << 1 | side;
    const int op = now == kUnwatched ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (::epoll_ctl(epoll_.get(), op, fd, &ev) != 0) {
      PLOG(ERROR) << "relay: epoll_ctl";
      return;
    }
    now = want;
  };
  set(p.client.get(), client, p.client_events, 1);
  set(p.server.get(), server, p.server_events, 0);
}

void StreamRelay::End(uint64_t key) {
  auto it = pipes_.find(key);
  if (it == pipes_.end()) return;
  std::unique_ptr<Pipe> p = std::move(it->second);
  pipes_.erase(it);
  // A uid's budget outlives its last pipe until it is whole again (Adopt
  // sweeps): connecting anew gets an emptied budget no tokens back.
  if (auto b = resets_.find(p->uid); b != resets_.end()) --b->second.pipes;
  if (p->client_events != ~0u) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, p->client.get(), nullptr);
  if (p->server_events != ~0u) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, p->server.get(), nullptr);
  Finish(std::move(p->client), p->key, p->uid);
  absl::MutexLock lock(&mu_);
  --relayed_;
}

void StreamRelay::Finish(UniqueFd client, uint64_t key, uid_t uid) {
  // The client sees the end (and the listener's duplicate of its socket
  // with it), and can send no more. What it still queued (a gRPC client's
  // last frame, say) is read off here, no fd ever installed: each chunk is
  // peeked first with room for the credentials only (SO_PASSCRED), so
  // fds show as a cut control message. Once they do (or past
  // kFinishChunks), the socket goes to a ForeignFds drain, which drops
  // them unopened: a refused or ended connection costs its uid one fd
  // there, not a record's worth installed and closed on its lane.
  ::shutdown(client.get(), SHUT_RDWR);
  const int on = 1;
  ::setsockopt(client.get(), SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
  ::setsockopt(client.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on));
  std::string chunk(kChunk, '\0');
  for (int i = 0; i < kFinishChunks; ++i) {
    Ancillary peeked;
    const ssize_t n = ReceiveMessage(client.get(), absl::MakeSpan(chunk.data(), chunk.size()),
                                     MSG_PEEK | MSG_DONTWAIT, 0, peeked);
    if (n < 0 && n != -EAGAIN) break;
    if (peeked.fds_cut || !peeked.fds.empty()) break;  // fds queued: the drain's
    if (n == 0 || n == -EAGAIN) return;  // all read: closing drops nothing
    // Bytes without fds, as peeked: off the queue.
    ssize_t taken;
    do {
      taken = ::recv(client.get(), chunk.data(), static_cast<size_t>(n), MSG_DONTWAIT);
    } while (taken < 0 && errno == EINTR);
    if (taken <= 0) break;
  }
  foreign_->Drain(key, uid, std::move(client));
}

bool StreamRelay::OverLimit(uid_t uid) const { return foreign_->OverLimit(uid); }

bool StreamRelay::Full() const { return foreign_->Full(); }

void StreamRelay::ResumeCleared() {
  std::vector<uint64_t> ready;
  for (const auto& [key, p] : pipes_) {
    if (p->paused && !foreign_->Waiting(key) && !foreign_->OverLimit(p->uid)) {
      ready.push_back(key);
    }
  }
  for (uint64_t key : ready) {
    auto it = pipes_.find(key);
    if (it == pipes_.end()) continue;
    it->second->paused = false;
    if (Pump(*it->second)) Watch(*it->second);
  }
}

}  // namespace halloc
