// Ends gRPC streams that outstay their time.
//
// hallocd's long-lived streams (a health watch, a reflection stream, a
// ReleaseMany) each hold a place (service/util/stream_slots.h: 4 of a
// kind, 2 per uid), one of the sync server's 32 threads and one of their
// uid's calls in flight (calls_per_uid.h) for as long as their client
// keeps them open. Places alone did not stop a client from keeping them:
// one that sent a ReleaseMany's first part and no more, or opened a
// reflection stream and asked nothing, held its places forever, and two
// uids so took a kind from every other caller. StreamTimeLimits bounds
// each kind's time; StreamDeadlines enforces the bound on a handler that
// waits in Read().
//
// A sync handler blocked in Read() cannot wake itself; a cancel from
// another thread ends that wait (Read() returns false). StreamDeadlines is
// that thread: each watched call is cancelled when its deadline passes,
// with a status of the watcher's choosing (grpc_call_cancel_with_status,
// the core call beneath ServerContext::TryCancel: TryCancel says
// CANCELLED, which a client reads as its own doing, and the status a
// handler returns after a cancel never reaches the client). The cancel
// runs no interceptor's cancel hook; hallocd's (CallsPerUid, ReplyWatch)
// ask for none.
//
// A call is watched from Watch() until its Deadline is stopped or
// destroyed, which the handler does before it returns: the thread cancels
// under the lock that Stop() takes, so it never reaches a call that has
// ended. Times are the monotonic clock's.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_STREAM_DEADLINES_H_
#define HALLOC_SERVICE_STREAM_DEADLINES_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace halloc {

// How long each kind of long-lived stream may last (hallocd's defaults;
// tests give shorter ones). Past its bound a stream is ended, its place
// and thread freed.
struct StreamTimeLimits {
  // A ReleaseMany, from its start to its last part. It carries at most a
  // session's ids (Allocator::max_release_ids: 2^18 by default, ~44 parts
  // of kReleaseIdsPerRequest, ~2.6 MB), which an honest client writes at
  // once: milliseconds on a local socket, well under a second on a loaded
  // machine. Past it: DEADLINE_EXCEEDED, nothing released (the stream is
  // all-or-nothing), as when the client's own deadline passes.
  absl::Duration release_many = absl::Seconds(10);
  // A reflection stream without a request, and in all. Generic tools
  // (grpcurl, grpc_cli) ask a few questions at once and are done in well
  // under a second; one that keeps its stream across a long call reopens
  // it when it finds it closed (grpcurl's client retries once on a stale
  // stream). Past either: DEADLINE_EXCEEDED.
  absl::Duration reflection_idle = absl::Seconds(10);
  absl::Duration reflection_lifetime = absl::Minutes(1);
  // A health watch, in all. Long-lived by design, but ended (with OK) once
  // this old, so that the places rotate: a watcher is to watch again when
  // its stream ends with any status but UNIMPLEMENTED (health.proto;
  // gRPC's client-side health checking, gRFC A17, re-watches at once after
  // a stream that had an answer, though it counts hallocd unready for
  // that round trip). Minutes: rare enough for that, and a place comes
  // free to a refused watcher within them.
  absl::Duration watch_lifetime = absl::Minutes(5);
  // A uid whose ReleaseMany or reflection stream was ended for outstaying
  // its time takes no place of that kind for this long
  // (StreamSlots::Slot::Overstayed): an honest client never outstays, and
  // without it the places a cut frees went back to whoever reopened first,
  // the staller again. (Not for a watch: its end is its lifetime, not
  // misuse.) A client that ends each stream itself just before the cut is
  // held by the kind's budget of place time instead
  // (StreamSlots::PlaceBudget): release_many in all within six times that,
  // a quarter of reflection_lifetime within twice it.
  absl::Duration overstay_cool_down = absl::Seconds(30);
};

class StreamDeadlines {
 public:
  StreamDeadlines();
  // Every Deadline of this is stopped or destroyed first.
  ~StreamDeadlines();
  StreamDeadlines(const StreamDeadlines&) = delete;
  StreamDeadlines& operator=(const StreamDeadlines&) = delete;

  // One call watched; stopped when destroyed.
  class Deadline {
   public:
    Deadline(Deadline&& other) noexcept;
    Deadline& operator=(Deadline&& other) = delete;
    ~Deadline() { Stop(); }

    // The call ends at `when` instead (an idle limit: each request moves
    // it). False when it was cut already.
    bool Set(absl::Time when);
    // No longer watched. False when the call was cut already: its client
    // has been told it failed, so the handler must not act on what it
    // read (a ReleaseMany cut after its last part releases nothing).
    bool Stop();

   private:
    friend class StreamDeadlines;
    Deadline(StreamDeadlines* owner, uint64_t id) : owner_(owner), id_(id) {}
    StreamDeadlines* owner_;
    uint64_t id_;
  };

  // Watches `call` (until the Deadline goes): at `when` it is cancelled
  // with `code` and `message`. For the call's handler, which must stop or
  // destroy the Deadline before it returns.
  Deadline Watch(grpc::ServerContext* call, absl::Time when, grpc::StatusCode code,
                 std::string message);

 private:
  struct Watched {
    grpc::ServerContext* call;
    absl::Time when;
    grpc::StatusCode code;
    std::string message;
    bool cut = false;
  };
  bool Set(uint64_t id, absl::Time when);
  bool Stop(uint64_t id);
  void Run();

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Watched> watched_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // The earliest deadline the thread sleeps towards; lowered to wake it.
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_STREAM_DEADLINES_H_
