#include "service/util/foreign_fds.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"

namespace halloc {
namespace {

// Records StopReceiving takes off a queue before it leaves the rest to
// Drain (the kernel queues at most net.unix.max_dgram_qlen, 10 by default,
// on a connected socket).
constexpr int kMaxSkipped = 64;

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

bool ForeignFds::disarm_sockets = true;

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
  State(uint64_t max, uint64_t max_total, UniqueFd ready)
      : max_per_uid(max), max_total(max_total), ready(std::move(ready)),
        disarm(disarm_sockets) {}

  struct Item {
    uint64_t key;
    uid_t uid;
    std::vector<UniqueFd> fds;
    bool drain;
  };

  void Run() {
    auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return stop || !queue.empty();
    };
    for (;;) {
      Item item;
      {
        absl::MutexLock lock(&mu);
        mu.Await(absl::Condition(&any));
        if (queue.empty()) return;  // stopped, and nothing left
        item = std::move(queue.front());
        queue.pop_front();
      }
      const uint64_t n = item.fds.size();
      if (item.drain) {
        // Out-of-band data (a stream socket's) is read with the rest, not
        // dropped by the kernel with its fds; each record's fds are closed
        // as it goes. An empty record (credentials only) is not the end.
        const int sock = item.fds.front().get();
        const int on = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
        for (;;) {
          absl::StatusOr<RawRecord> rec = ReceiveRawRecord(sock, true);
          if (!rec.ok()) break;
          if (disarm) Disarm(rec->record.fds);
        }
      }
      if (disarm) Disarm(item.fds);
      item.fds.clear();  // closes here: what may wait for its sender
      {
        absl::MutexLock lock(&mu);
        Untally(by_key, item.key, 1);
        Untally(by_uid, item.uid, n);
        total -= n;
      }
      const uint64_t one = 1;
      (void)!::write(ready.get(), &one, sizeof(one));
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
  const UniqueFd ready;
  const bool disarm;
  mutable absl::Mutex mu;
  std::deque<Item> queue ABSL_GUARDED_BY(mu);
  // Items waiting (or being closed) per connection key; fds per uid.
  absl::flat_hash_map<uint64_t, uint64_t> by_key ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uid_t, uint64_t> by_uid ABSL_GUARDED_BY(mu);
  uint64_t total ABSL_GUARDED_BY(mu) = 0;
  bool stop ABSL_GUARDED_BY(mu) = false;
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<ForeignFds>> ForeignFds::Create(uint64_t max_per_uid,
                                                               uint64_t max_total) {
  UniqueFd ready(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ready) return ErrnoStatus(errno, "eventfd");
  auto state = std::make_shared<State>(max_per_uid, max_total, std::move(ready));
  // The thread holds the state too: it may outlive this object.
  state->thread = std::thread([s = state] { s->Run(); });
  return std::unique_ptr<ForeignFds>(new ForeignFds(std::move(state)));
}

ForeignFds::ForeignFds(std::shared_ptr<State> state) : state_(std::move(state)) {}

ForeignFds::~ForeignFds() {
  bool idle;
  {
    absl::MutexLock lock(&state_->mu);
    state_->stop = true;
    idle = state_->by_key.empty();
  }
  // Idle, it ends at once; held by a sender's file, it is let be.
  if (idle) {
    state_->thread.join();
  } else {
    state_->thread.detach();
  }
}

void ForeignFds::Add(uint64_t key, uid_t uid, std::vector<UniqueFd> fds, bool drain) {
  if (fds.empty()) return;
  absl::MutexLock lock(&state_->mu);
  ++state_->by_key[key];
  state_->by_uid[uid] += fds.size();
  state_->total += fds.size();
  state_->queue.push_back(State::Item{key, uid, std::move(fds), drain});
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
