#include "clients/camera/loans.h"

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::camera {

absl::StatusOr<v1::Grant> FrameLoans::Lend(const Frame& frame, absl::Time now,
                                           absl::FunctionRef<absl::StatusOr<v1::Grant>()> share) {
  ASSIGN_OR_RETURN(const Holders before, Look(frame.buffer->id()));
  ASSIGN_OR_RETURN(v1::Grant grant, share());
  loans_.push_back(
      Loan{frame.index, frame.sequence, grant.buffer_id(), grant.id(), now, before.imports_total});
  return grant;
}

absl::StatusOr<FrameLoans::Holders> FrameLoans::Look(uint64_t buffer_id) {
  ASSIGN_OR_RETURN(v1::BufferInfo info, client_->Describe(buffer_id));
  Holders out;
  out.imports_total = info.imports_total();
  for (const v1::Holder& h : info.holders()) {
    if (!h.caller()) out.consumer = true;
  }
  return out;
}

absl::StatusOr<std::optional<FrameLoans::Return>> FrameLoans::Settle(Loan& loan, absl::Time now) {
  ASSIGN_OR_RETURN(const Holders before, Look(loan.buffer_id));
  if (!loan.ending) {
    if (before.consumer || before.imports_total > loan.imports_before) loan.imported = true;
    const bool timed_out = now - loan.lent_at >= timeout_;
    // Within its time, a loan goes on while a consumer holds the frame or
    // may yet import it.
    if (!timed_out && (before.consumer || !loan.imported)) return std::nullopt;
    loan.ending = true;
    loan.timed_out = timed_out;
    loan.imports_at_end = before.imports_total;
  }
  // Kept across a retry (a revoke or a look after it that failed): the
  // revoke may have ended the holds this look would have seen.
  loan.held_at_end = loan.held_at_end || before.consumer;
  // No import from here on. A grant hallocd no longer has (expired, or
  // revoked by an earlier try) cannot be imported either.
  const absl::Status revoked = client_->Revoke(loan.grant_id);
  if (!revoked.ok() && !absl::IsNotFound(revoked)) return revoked;
  ASSIGN_OR_RETURN(const Holders after, Look(loan.buffer_id));
  // Whoever held the buffer as its loan ended, or imported it since (the
  // count moved), or holds it still. (Whether the revoke cut them off is
  // the backend's: hallocd does not say.)
  const bool held = loan.held_at_end || after.consumer || after.imports_total > loan.imports_at_end;
  return Return{loan.index, loan.sequence, loan.timed_out, held};
}

absl::StatusOr<std::vector<FrameLoans::Return>> FrameLoans::Collect(absl::Time now) {
  std::vector<Return> out;
  std::vector<Loan> kept;
  absl::Status error;
  for (Loan& loan : loans_) {
    absl::StatusOr<std::optional<Return>> settled =
        error.ok() ? Settle(loan, now) : std::optional<Return>();
    if (!settled.ok()) error = settled.status();
    if (settled.ok() && settled->has_value()) {
      out.push_back(**settled);
    } else {
      kept.push_back(loan);
    }
  }
  loans_ = std::move(kept);
  // Frames whose grants are gone go back even if a later loan failed; the
  // next Collect meets that error again.
  if (!error.ok() && out.empty()) return error;
  return out;
}

}  // namespace halloc::camera
