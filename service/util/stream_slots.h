// Places for long-lived gRPC calls. On hallocd's sync server a stream (a
// health watch, a reflection stream, a ReleaseMany) holds one of its 32
// threads for as long as its client keeps it open, however slowly that
// client speaks: each kind gets at most `total` at once, at most
// `per_uid` of them for one uid, so that neither one client nor one user
// can take a service, or the threads, from everyone else. A stream its
// service ended for outstaying its time (stream_deadlines.h) keeps its
// uid from taking another of that kind for a while (Overstayed): places
// freed by such cuts go to others, not back to whoever reopens first.
//
// Cuts alone did not stop a client that ended each stream itself just
// before the cut and opened another: it held its places all the time. So
// each kind may also have a budget (PlaceBudget): how long one uid's
// streams of it may hold places in all within a window (util/
// time_budget.h: each ended stream charged to the window its end falls
// in); a uid whose ended streams in the open window and open streams so
// far have held that much takes no new place. An honest client's streams
// are done in a fraction of it.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_
#define HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/util/time_budget.h"

namespace halloc {

class StreamSlots {
 public:
  // The time one uid's streams of a kind may hold places within `window`
  // (the sum over its streams, each counted when it ends); infinite: no
  // budget.
  struct PlaceBudget {
    absl::Duration allowed = absl::InfiniteDuration();
    absl::Duration window = absl::Minutes(1);
  };

  // A place taken; given back when destroyed.
  class Slot {
   public:
    Slot(Slot&& other) noexcept;
    Slot& operator=(Slot&& other) noexcept;
    ~Slot();

    // Its stream was ended for outstaying its time: its uid takes no place
    // of this kind for `cool_down` from now (a caller of unknown uid: no
    // such hold).
    void Overstayed(absl::Duration cool_down);

   private:
    friend class StreamSlots;
    Slot(StreamSlots* owner, std::optional<uid_t> uid, absl::Time taken_at)
        : owner_(owner), uid_(uid), taken_at_(taken_at) {}
    StreamSlots* owner_;
    std::optional<uid_t> uid_;
    absl::Time taken_at_;
  };

  // `what` names the streams in refusals ("reflection streams").
  StreamSlots(std::string what, int total, int per_uid, PlaceBudget budget);
  StreamSlots(std::string what, int total, int per_uid)
      : StreamSlots(std::move(what), total, per_uid, PlaceBudget()) {}

  // A place for a stream of `uid` (nullopt: a caller whose uid is not
  // known, held to `total` alone: in-process channels), or
  // RESOURCE_EXHAUSTED saying which limit was reached, that the uid's
  // last such stream overstayed (Slot::Overstayed), or that its streams
  // used their budget, and for how long more it is refused.
  absl::StatusOr<Slot> Take(std::optional<uid_t> uid);

  int taken() const;

 private:
  void Give(std::optional<uid_t> uid, absl::Time taken_at);
  void CoolDown(uid_t uid, absl::Duration cool_down);

  const std::string what_;
  const int total_;
  const int per_uid_;
  const PlaceBudget budget_limits_;
  mutable absl::Mutex mu_;
  int taken_ ABSL_GUARDED_BY(mu_) = 0;
  // Per uid: its streams open now, and the sum of their starts (since
  // the epoch of MonotonicNow()), so that their time held so far counts
  // against the budget before they end.
  struct Held {
    int open = 0;
    absl::Duration taken_at_sum;
  };
  absl::flat_hash_map<uid_t, Held> by_uid_ ABSL_GUARDED_BY(mu_);
  // Uids refused until then (monotonic); expired ones pruned as it grows.
  absl::flat_hash_map<uid_t, absl::Time> cooling_ ABSL_GUARDED_BY(mu_);
  // Place time per uid (PlaceBudget).
  TimeBudget budget_ ABSL_GUARDED_BY(mu_);
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_
