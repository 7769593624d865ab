#include "service/audit.h"

#include <glog/logging.h>

#include "absl/strings/str_cat.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

// Callers without an identity (no session) share one budget.
constexpr uint32_t kNoUid = UINT32_MAX;

}  // namespace

void AuditFailure(absl::string_view path, absl::string_view method,
                  const Session* session, const Identity* caller,
                  const absl::Status& status) {
  const absl::StatusCode code = status.code();
  const bool denial = code == absl::StatusCode::kPermissionDenied ||
                      code == absl::StatusCode::kUnauthenticated;
  const bool quota = code == absl::StatusCode::kResourceExhausted;
  if (!denial && !quota && code != absl::StatusCode::kInternal) return;
  // 20 lines a second of each kind, at most 4 of them for one uid (the
  // one it is charged as: a user's subordinate uids are that user), and 8
  // for one uid of all kinds (methods × codes) together: one user's flood
  // of refusals leaves room for another's to be seen, and taking turns
  // through the kinds gets it no more.
  static LogLimiter* const limiter = new LogLimiter(20, absl::Seconds(1), 4, 8);
  if (caller == nullptr && session != nullptr) caller = &session->creds();
  uint64_t dropped = 0;
  if (!limiter->AllowFor(absl::StrCat(method, "/", static_cast<int>(code)),
                         caller != nullptr ? caller->charged_uid() : kNoUid, &dropped)) {
    return;
  }
  std::string who = "unauthenticated caller";
  if (caller != nullptr) {
    who = absl::StrCat(session ? absl::StrCat("session ", session->id(), " ") : "", "uid ",
                       caller->uid, " pid ", caller->pid, " exe '",
                       LogSafe(caller->exe, kLoggedPathBytes), "'");
  }
  LOG(WARNING) << "AUDIT " << method << (denial || quota ? " denied" : " failed") << " (" << path
               << ") for " << who << ": " << absl::StatusCodeToString(code) << ": "
               << LogSafe(status.message(), kLoggedMessageBytes) << LogLimiter::Dropped(dropped);
}

}  // namespace halloc
