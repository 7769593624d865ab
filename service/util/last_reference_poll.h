// LastReferencePoll: learns when the memory behind an fd is gone by asking,
// now and then, whether the fd it was given is the last reference to that
// memory. For memory whose end no event reports: a dma-buf's inode keeps a
// link, so inotify never sees it go (last_reference.h); its fdinfo does
// count the references to its file (Backend::IsLastReference).
//
// It keeps each fd it follows until the answer is yes, then closes it: the
// memory stays allocated (and, in hallocd, charged) while anyone else has
// it, and one fd in hallocd per buffer followed, as while the buffer was
// live (Registry::SetMaxBuffers counts them).
//
// When it asks: once at Follow (a client that closed its fd before its
// Release, the usual order, frees the memory at once), then on a thread of
// its own at growing intervals per fd (kFirstInterval, doubling up to
// kMaxInterval: memory kept for long is asked about rarely), and at once,
// a bounded number, on Refresh (hallocd: before refusing a uid for memory).
// A Refresh asks about all memory not asked about since its Follow (up to
// kMaxRefresh: each is asked so once, whoever refreshes); the rest it asks
// about within a budget per group, kMaxRefresh per kRefreshWindow, so that
// a client refused again and again costs hallocd a bounded amount of asking
// per second, not per refusal.
// The question is asked with no lock held; asking costs one read of
// /proc/self/fdinfo (~5 µs). Finding what to ask about costs no scan of
// what is kept: the thread's passes and a Refresh take only what they
// ask about. Its times are the monotonic clock's (a wall-clock step
// neither delays nor hastens a pass).
//
// Thread-safe.
#ifndef HALLOC_SERVICE_UTIL_LAST_REFERENCE_POLL_H_
#define HALLOC_SERVICE_UTIL_LAST_REFERENCE_POLL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "service/util/clock.h"
#include "service/util/last_reference.h"

namespace halloc {

class LastReferencePoll : public LastReferenceFollower {
 public:
  // Whether `fd` is the last reference to its memory: 1 yes, 0 no, or
  // -errno when it cannot tell. A passing error (EMFILE, ENFILE, ENOMEM,
  // EAGAIN, EINTR) is asked again later, like a no; any other is final:
  // that memory is reported gone at once, counted in unwatched().
  using IsLast = std::function<int(int fd)>;
  static constexpr absl::Duration kFirstInterval = absl::Milliseconds(100);
  static constexpr absl::Duration kMaxInterval = absl::Seconds(30);
  // The most Refresh asks about in one call; and of memory already asked
  // about since its Follow, the most per group (and for anyone's) per
  // kRefreshWindow.
  static constexpr size_t kMaxRefresh = 256;
  static constexpr absl::Duration kRefreshWindow = absl::Milliseconds(100);
  using Clock = std::function<absl::Time()>;

  // `on_a_thread` false (tests): asked only at Follow and Refresh. `now`:
  // the monotonic clock (tests pass their own).
  explicit LastReferencePoll(IsLast is_last, bool on_a_thread = true,
                             Clock now = MonotonicNow);
  // Stops the thread and closes every fd still kept.
  ~LastReferencePoll() override;
  LastReferencePoll(const LastReferencePoll&) = delete;
  LastReferencePoll& operator=(const LastReferencePoll&) = delete;

  // Asks at once (on the caller's thread); keeps `fd` unless it is the last.
  void Follow(UniqueFd fd, uint64_t token, uint64_t group = 0) override;
  // What the asking found gone so far (its fds were closed before).
  std::vector<uint64_t> TakeGone(std::vector<UniqueFd>* to_close = nullptr) override;
  // Asks now about what `group` (nullopt: anyone) follows: kMaxRefresh at
  // most, those asked about least often first (the newest), then those
  // asked about longest ago, these within the group's budget.
  void Refresh(std::optional<uint64_t> group) override;
  uint64_t unwatched() const override;
  // Memory followed and not yet known gone.
  size_t following() const;

 private:
  struct Kept {
    UniqueFd fd;
    uint64_t token = 0;
    uint64_t group = 0;
    absl::Time asked;  // last put back after an ask (InfinitePast: never)
    uint32_t asks = 0;  // answers so far (a no, or a passing error)
  };
  // One group's memory, by count of answers (the last queue: that many and
  // more). Each queue holds its entries in the order they were put back,
  // which is the order they were last asked about and, one interval per
  // count, the order they fall due: the thread takes from the fronts, and
  // Refresh from the front of the lowest queue up, neither scanning the
  // rest. kQueues - 1 answers already reach kMaxInterval.
  static constexpr uint32_t kQueues = 16;
  // Asks a Refresh may still spend on memory asked about before, in the
  // window that began at `start`.
  struct Budget {
    absl::Time start = absl::InfinitePast();
    size_t used = 0;
    size_t LeftAt(absl::Time now);
  };
  struct Group {
    std::deque<Kept> by_asks[kQueues];
    size_t size = 0;
    Budget refresh;
  };

  // Takes out what is due by `now` / what Refresh(group) asks about,
  // counted in asking_ until Ask puts it back or reports it gone.
  std::vector<Kept> TakeDueLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<Kept> TakeForRefreshLocked(std::optional<uint64_t> group, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The earliest due of what is kept (InfiniteFuture: nothing).
  absl::Time NextDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pops `q`'s front into `out`, keeping the counts.
  void PopLocked(Group& g, std::deque<Kept>& q, std::vector<Kept>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops groups left empty (after a put-back: a pass or a refresh that
  // empties a group mostly puts it back at once) whose refresh budget's
  // window is over.
  void PruneLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Asks about each of `kept` (taken out; no lock held), then puts back
  // what someone else still has, due again after its next interval, and
  // reports the rest gone (their fds close on the way out).
  void Ask(std::vector<Kept> kept);
  void Run();

  const IsLast is_last_;
  const bool on_a_thread_;
  const Clock now_;
  mutable absl::Mutex mu_;
  absl::CondVar changed_;  // something new to ask about, or stop_
  absl::flat_hash_map<uint64_t, Group> groups_ ABSL_GUARDED_BY(mu_);
  size_t kept_ ABSL_GUARDED_BY(mu_) = 0;  // in groups_
  size_t asking_ ABSL_GUARDED_BY(mu_) = 0;  // taken out by Ask, not back yet
  std::vector<uint64_t> gone_ ABSL_GUARDED_BY(mu_);
  uint64_t unwatched_ ABSL_GUARDED_BY(mu_) = 0;
  Budget anyones_refresh_ ABSL_GUARDED_BY(mu_);  // Refresh(nullopt)'s
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started by the first Follow that keeps an fd
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LAST_REFERENCE_POLL_H_
