// Places for long-lived gRPC calls. On hallocd's sync server a stream (a
// health watch, a reflection stream, a ReleaseMany) holds one of its 32
// threads for as long as its client keeps it open, however slowly that
// client speaks: each kind gets at most `total` at once, at most
// `per_uid` of them for one uid, so that neither one client nor one user
// can take a service, or the threads, from everyone else. A stream its
// service ended for outstaying its time (stream_deadlines.h) keeps its
// uid from taking another of that kind for a while (Overstayed): places
// freed by such cuts go to others, not back to whoever reopens first. So
// does one its client ended itself once it had held its place for half
// its time or more, or gone half its idle time without a request (Ended):
// a client that stalls and ends each stream just before the cut would
// otherwise keep its places for ever.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_
#define HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_

#include <sys/types.h>

#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace halloc {

class StreamSlots {
 public:
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
    // A request came on its stream (the idle time starts again).
    void Active();
    // Its stream ended before a bound cut it: as Overstayed when it held
    // its place for half of `lifetime` or more, or its last request (or
    // its start) is half of `idle` or more old. An honest client's stream
    // is done in a fraction of either. Whether it was so held off.
    bool Ended(absl::Duration idle, absl::Duration lifetime, absl::Duration cool_down);

   private:
    friend class StreamSlots;
    Slot(StreamSlots* owner, std::optional<uid_t> uid, absl::Time now)
        : owner_(owner), uid_(uid), taken_at_(now), active_at_(now) {}
    StreamSlots* owner_;
    std::optional<uid_t> uid_;
    absl::Time taken_at_;
    absl::Time active_at_;
  };

  // `what` names the streams in refusals ("reflection streams").
  StreamSlots(std::string what, int total, int per_uid);

  // A place for a stream of `uid` (nullopt: a caller whose uid is not
  // known, held to `total` alone: in-process channels), or
  // RESOURCE_EXHAUSTED saying which limit was reached, or that the uid's
  // last such stream overstayed (Slot::Overstayed, Slot::Ended) and for
  // how long more it is refused.
  absl::StatusOr<Slot> Take(std::optional<uid_t> uid);

  int taken() const;

 private:
  void Give(std::optional<uid_t> uid);
  void CoolDown(uid_t uid, absl::Duration cool_down);

  const std::string what_;
  const int total_;
  const int per_uid_;
  mutable absl::Mutex mu_;
  int taken_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uid_t, int> by_uid_ ABSL_GUARDED_BY(mu_);
  // Uids refused until then (monotonic); expired ones pruned as it grows.
  absl::flat_hash_map<uid_t, absl::Time> cooling_ ABSL_GUARDED_BY(mu_);
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_STREAM_SLOTS_H_
