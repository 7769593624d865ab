#include "service/util/foreign_fds.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <system_error>
#include <thread>
#include <utility>

#include <glog/logging.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "service/util/release_ticker.h"

namespace halloc {
namespace {

// Records StopReceiving takes off a queue before it leaves the rest to
// Drain (the kernel queues at most net.unix.max_dgram_qlen, 10 by default,
// on a connected socket).
constexpr int kMaxSkipped = 64;

// How soon a tick ends a release's wait (release_ticker.h) on the threads.
constexpr absl::Duration kTick = absl::Microseconds(200);

// Before `fds` are closed: a socket among them is made to close at once
// (SO_LINGER on, 0 s: a TCP socket's unsent data is dropped and its peer
// reset), so that no linger time its sender chose can hold this thread.
void Disarm(const std::vector<UniqueFd>& fds) {
  for (const UniqueFd& fd : fds) {
    struct stat st;
    if (::fstat(fd.get(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    const struct linger now{1, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &now, sizeof(now));
  }
}

}  // namespace

bool ForeignFds::bound_releases = true;

bool StopReceiving(int sock) {
  ::shutdown(sock, SHUT_RD);
  // With SO_PASSCRED the kernel writes the credentials of every record (the
  // only room given), and marks one with fds as cut (MSG_CTRUNC) without
  // installing them; at the end of the queue, nothing.
  const int on = 1;
  ::setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on));
  for (int i = 0; i < kMaxSkipped; ++i) {
    Ancillary peeked;
    ssize_t n = ReceiveMessage(sock, {}, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC, 0, peeked);
    if (n < 0) return n != -EAGAIN;  // EAGAIN: empty; else unknown: drain
    if (peeked.fds_cut) return true;
    if (n == 0 && !peeked.any) return false;  // end of the queue
    // A record without fds: off the queue (nothing to drop).
    do {
      n = ::recv(sock, nullptr, 0, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return errno != EAGAIN;
  }
  return true;
}

struct ForeignFds::State {
  State(uint64_t max, uint64_t max_total, int max_threads, UniqueFd ready)
      : max_per_uid(max), max_total(max_total), max_threads(max_threads),
        ready(std::move(ready)), bound(bound_releases) {}

  struct Item {
    uint64_t key;
    uid_t uid;
    std::vector<UniqueFd> fds;
    bool drain;
  };
  // One uid's closes, or its drains, in order; one thread at a time.
  struct Lane {
    std::deque<Item> items;
    bool busy = false;
  };
  static uint64_t LaneOf(uid_t uid, bool drain) {
    return (static_cast<uint64_t>(uid) << 1) | (drain ? 1 : 0);
  }

  // Starts one more thread (holding the state: it may outlive the owner).
  absl::Status Spawn(const std::shared_ptr<State>& self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    try {
      threads.emplace_back([s = self] { s->Run(); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start a thread to close foreign fds: ", e.what()));
    }
    return absl::OkStatus();
  }

  // Starts a thread when more lanes are ready than threads idle, up to
  // max_threads: one held by a sender's file never holds another's lane.
  // Past a failure to start one (a task limit reached), the running
  // threads serve every lane, in turn.
  void MaybeSpawn(const std::shared_ptr<State>& self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (ready_lanes.size() <= static_cast<size_t>(idle) ||
        static_cast<int>(threads.size()) >= max_threads) {
      return;
    }
    if (absl::Status s = Spawn(self); !s.ok()) {
      LOG_FIRST_N(WARNING, 1) << s << ": " << threads.size() << " serve every uid's in turn";
    }
  }

  void Run() {
    std::unique_ptr<ReleaseTicker> ticker;
    if (bound) {
      absl::StatusOr<std::unique_ptr<ReleaseTicker>> t = ReleaseTicker::ForThisThread(kTick);
      if (t.ok()) {
        ticker = *std::move(t);
      } else {
        LOG_FIRST_N(WARNING, 1) << "foreign fds: " << t.status()
                                << ": a lingering socket sent to hallocd holds the thread "
                                   "closing it for its linger time";
      }
    }
    auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return stop || !ready_lanes.empty();
    };
    for (;;) {
      uint64_t lane_id;
      Item item;
      {
        absl::MutexLock lock(&mu);
        ++idle;
        mu.Await(absl::Condition(&any));
        --idle;
        if (ready_lanes.empty()) return;  // stopped, and nothing left
        lane_id = ready_lanes.front();
        ready_lanes.pop_front();
        Lane& lane = lanes[lane_id];
        lane.busy = true;
        item = std::move(lane.items.front());
        lane.items.pop_front();
      }
      const uint64_t n = item.fds.size();
      {
        ReleaseTicker::Armed armed(ticker.get());
        if (item.drain) DropQueued(item.fds.front().get());
        if (bound) Disarm(item.fds);
        item.fds.clear();  // closes here: a flush may wait for its sender
      }
      {
        absl::MutexLock lock(&mu);
        Untally(by_key, item.key, 1);
        Untally(by_uid, item.uid, n);
        total -= n;
        Lane& lane = lanes[lane_id];
        lane.busy = false;
        if (lane.items.empty()) {
          lanes.erase(lane_id);
        } else {
          ready_lanes.push_back(lane_id);  // behind the other lanes: in turn
        }
      }
      const uint64_t one = 1;
      (void)!::write(ready.get(), &one, sizeof(one));
    }
  }

  // Receives every record still queued on `sock` with no room for control
  // data at all: the kernel drops their fds unopened (released here, never
  // installed, never flushed), whatever the socket's options. On a
  // datagram socket an empty record is not the end: with SO_PASSCRED it
  // reads as 0 bytes marked cut (its credentials found no room), the end
  // as 0 bytes unmarked. On a stream socket 0 bytes is the end (marked cut
  // too: its credentials). A stream's out-of-band byte is read inline, not
  // left behind. A pending socket error (ECONNRESET, once the peer closed
  // with our records unread) is reported once, before the queue: read on.
  // What is left (an unknown type, errors that persist) goes with the
  // socket's last reference: this one's, here, unless another holds it.
  static void DropQueued(int sock) {
    const int on = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on));
    ::setsockopt(sock, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return;
    std::vector<char> sink(64 * 1024);
    for (int errors = 0;;) {
      iovec iov{sink.data(), sink.size()};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      const ssize_t n = ::recvmsg(sock, &msg, MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || (errno != EAGAIN && ++errors < 4))) continue;
      if (n < 0) return;  // nothing more queued
      if (n == 0 && (type == SOCK_STREAM || (msg.msg_flags & MSG_CTRUNC) == 0)) return;
    }
  }

  template <typename Map, typename K>
  static void Untally(Map& map, const K& k, uint64_t n) {
    auto it = map.find(k);
    if (it == map.end()) return;
    if (it->second <= n) {
      map.erase(it);
    } else {
      it->second -= n;
    }
  }

  const uint64_t max_per_uid;
  const uint64_t max_total;
  const int max_threads;
  const UniqueFd ready;
  const bool bound;
  mutable absl::Mutex mu;
  absl::flat_hash_map<uint64_t, Lane> lanes ABSL_GUARDED_BY(mu);
  std::deque<uint64_t> ready_lanes ABSL_GUARDED_BY(mu);  // not busy, not empty
  // Items waiting (or being closed) per connection key; fds per uid.
  absl::flat_hash_map<uint64_t, uint64_t> by_key ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uid_t, uint64_t> by_uid ABSL_GUARDED_BY(mu);
  uint64_t total ABSL_GUARDED_BY(mu) = 0;
  int idle ABSL_GUARDED_BY(mu) = 0;
  bool stop ABSL_GUARDED_BY(mu) = false;
  std::vector<std::thread> threads ABSL_GUARDED_BY(mu);
};

absl::StatusOr<std::unique_ptr<ForeignFds>> ForeignFds::Create(uint64_t max_per_uid,
                                                               uint64_t max_total,
                                                               int max_threads) {
  UniqueFd ready(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ready) return ErrnoStatus(errno, "eventfd");
  auto state = std::make_shared<State>(max_per_uid, max_total, std::max(1, max_threads),
                                       std::move(ready));
  // One thread from the start (more as lanes need them): a process that
  // cannot start even one fails here, not on a client's record.
  {
    absl::MutexLock lock(&state->mu);
    if (absl::Status s = state->Spawn(state); !s.ok()) return s;
  }
  return std::unique_ptr<ForeignFds>(new ForeignFds(std::move(state)));
}

ForeignFds::ForeignFds(std::shared_ptr<State> state) : state_(std::move(state)) {}

ForeignFds::~ForeignFds() {
  bool idle;
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&state_->mu);
    state_->stop = true;
    idle = state_->by_key.empty();
    threads.swap(state_->threads);
  }
  // Idle, they end at once; held by a sender's file, they are let be (each
  // holds the state: what it was given is closed, then it ends).
  for (std::thread& t : threads) {
    if (idle) {
      t.join();
    } else {
      t.detach();
    }
  }
}

void ForeignFds::Add(uint64_t key, uid_t uid, std::vector<UniqueFd> fds, bool drain) {
  if (fds.empty()) return;
  absl::MutexLock lock(&state_->mu);
  ++state_->by_key[key];
  state_->by_uid[uid] += fds.size();
  state_->total += fds.size();
  const uint64_t lane_id = State::LaneOf(uid, drain);
  State::Lane& lane = state_->lanes[lane_id];
  lane.items.push_back(State::Item{key, uid, std::move(fds), drain});
  if (!lane.busy && lane.items.size() == 1) state_->ready_lanes.push_back(lane_id);
  state_->MaybeSpawn(state_);
}

void ForeignFds::Close(uint64_t key, uid_t uid, std::vector<UniqueFd> fds) {
  Add(key, uid, std::move(fds), /*drain=*/false);
}

void ForeignFds::Drain(uint64_t key, uid_t uid, UniqueFd sock) {
  std::vector<UniqueFd> one;
  one.push_back(std::move(sock));
  Add(key, uid, std::move(one), /*drain=*/true);
}

bool ForeignFds::Waiting(uint64_t key) const {
  absl::MutexLock lock(&state_->mu);
  return state_->by_key.contains(key);
}

uint64_t ForeignFds::waiting_of(uid_t uid) const {
  absl::MutexLock lock(&state_->mu);
  auto it = state_->by_uid.find(uid);
  return it == state_->by_uid.end() ? 0 : it->second;
}

bool ForeignFds::OverLimit(uid_t uid) const {
  return waiting_of(uid) >= state_->max_per_uid;
}

bool ForeignFds::Full() const {
  absl::MutexLock lock(&state_->mu);
  return state_->total >= state_->max_total;
}

int ForeignFds::ready_fd() const { return state_->ready.get(); }

void ForeignFds::Acknowledge() {
  uint64_t n;
  (void)!::read(state_->ready.get(), &n, sizeof(n));
}

}  // namespace halloc
