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
  out.cuts_off = info.backend() == "halloc";
  for (const v1::Holder& h : info.holders()) {
    if (!h.caller()) out.consumer = true;
  }
  return out;
}

absl::StatusOr<std::optional<FrameLoans::Return>> FrameLoans::Settle(Loan& loan, absl::Time now) {
  ASSIGN_OR_RETURN(Holders now_held, Look(loan.buffer_id));
  if (now_held.consumer || now_held.imports_total > loan.imports_before) loan.imported = true;
  const bool timed_out = now - loan.lent_at >= timeout_;
  // Within its time, a loan goes on while a consumer holds the frame or
  // may yet import it.
  if (!timed_out && (now_held.consumer || !loan.imported)) return std::nullopt;
  // No import from here on. A grant hallocd no longer has (expired, or
  // revoked by an earlier Collect that then failed) cannot be imported
  // either.
  const absl::Status revoked = client_->Revoke(loan.grant_id);
  if (!revoked.ok() && !absl::IsNotFound(revoked)) return revoked;
  ASSIGN_OR_RETURN(const Holders after, Look(loan.buffer_id));
  // The halloc backend's revoke cut every consumer off: one still listed
  // held it some other way. Elsewhere the revoke ended the consumers'
  // holds but not their fds: whoever held the buffer before it, or
  // imported it in between (the count moved), can still read it.
  const bool still_held = after.cuts_off ? after.consumer
                                         : now_held.consumer || after.consumer ||
                                               after.imports_total > now_held.imports_total;
  return Return{loan.index, loan.sequence, timed_out, still_held};
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
