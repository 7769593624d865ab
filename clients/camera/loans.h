// Frames lent to consumers through grants, and when each may go back to
// its source. A source writes into a buffer as soon as it has it back
// (V4L2: the next capture into that slot; the synthetic source: the next
// pattern), so a shared frame goes back only once no consumer can still
// read it:
//
//   FrameLoans loans(client, absl::Seconds(1));
//   ASSIGN_OR_RETURN(v1::Grant grant, loans.Lend(frame, absl::Now(), [&] {
//     return cam->ShareWithClient(frame, "viewer", v1::CPU_ACCESS_READ);
//   }));
//   ...
//   ASSIGN_OR_RETURN(std::vector<FrameLoans::Return> back, loans.Collect(absl::Now()));
//   for (const FrameLoans::Return& r : back) RETURN_IF_ERROR(cam->Requeue(r.index));
//
// A loan ends when a consumer imported the frame and every consumer has
// let go of it (hallocd's Describe says how many imports of the buffer it
// made, BufferInfo.imports_total, and who holds it now), or when the time
// given has passed (the consumer never imported it, or kept it). Its
// grant is revoked before the frame goes back either way, so the token
// cannot be imported into a buffer the source is writing again. On the
// halloc backend that revoke also cuts off a consumer that kept the frame
// too long (its mappings fault); on the others the consumer keeps its fd.
// Either way the Return says that a consumer still had it (`still_held`):
// hallocd does not tell which kind of revoke it made.
//
// Against a hallocd older than imports_total, a consumer that imports and
// lets go between two Collects is not seen importing: its loan ends at the
// timeout.
//
// Thread-compatible: one thread drives a FrameLoans.
#ifndef HALLOC_CLIENTS_CAMERA_LOANS_H_
#define HALLOC_CLIENTS_CAMERA_LOANS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/camera/camera.h"
#include "clients/cpp/halloc/client.h"

namespace halloc::camera {

class FrameLoans {
 public:
  // `client`: the session that owns the frames' buffers and made the
  // grants (the Camera's). `timeout`: how long a consumer has to import a
  // frame and let go of it.
  FrameLoans(Client& client, absl::Duration timeout) : client_(&client), timeout_(timeout) {}

  // Shares `frame` through `share` (e.g. Camera::ShareWithClient) and
  // lends it from `now`; the caller keeps the frame (does not Requeue it)
  // until Collect returns it. Its buffer's import count is read before the
  // share, so that an import made right after it counts. `frame` must not
  // be lent already.
  absl::StatusOr<v1::Grant> Lend(const Frame& frame, absl::Time now,
                                 absl::FunctionRef<absl::StatusOr<v1::Grant>()> share);

  struct Return {
    uint32_t index = 0;       // the Frame's index: Requeue it
    uint32_t sequence = 0;    // the Frame's sequence, for messages
    bool timed_out = false;   // the loan ended at its timeout
    // A consumer held the buffer as the loan ended (its time ran out with
    // the frame in hand), or imported it as the grant was revoked: on a
    // backend with live revoke it is cut off, elsewhere it keeps its fd.
    bool still_held = false;
  };
  // The frames whose loans ended by `now`, each grant revoked. An error of
  // Describe or Revoke (hallocd gone) leaves that loan and those after it
  // lent, and is returned unless an earlier loan ended (then the next
  // Collect meets it again).
  absl::StatusOr<std::vector<Return>> Collect(absl::Time now);

  // Frames lent and not yet returned.
  size_t size() const { return loans_.size(); }

 private:
  struct Loan {
    uint32_t index;
    uint32_t sequence;
    uint64_t buffer_id;
    uint64_t grant_id;
    absl::Time lent_at;
    uint64_t imports_before;  // the buffer's imports_total before the share
    bool imported = false;    // a consumer took it (imports since, or holds it)
    // Set once the loan ends (its grant is being revoked), kept for a retry.
    bool ending = false;
    bool timed_out = false;
    bool held_at_end = false;     // a consumer held it then
    uint64_t imports_at_end = 0;  // the buffer's imports_total then
  };
  // The loan's Return if it ends at `now` (its grant revoked), nullopt if
  // it goes on.
  absl::StatusOr<std::optional<Return>> Settle(Loan& loan, absl::Time now);
  // Who holds `buffer_id` as hallocd says: whether a session other than
  // this one does, and its import count.
  struct Holders {
    bool consumer = false;
    uint64_t imports_total = 0;
  };
  absl::StatusOr<Holders> Look(uint64_t buffer_id);

  Client* client_;
  absl::Duration timeout_;
  std::vector<Loan> loans_;
};

}  // namespace halloc::camera

#endif  // HALLOC_CLIENTS_CAMERA_LOANS_H_
