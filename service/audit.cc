#include "service/audit.h"

#include <glog/logging.h>

#include "absl/strings/str_cat.h"
#include "service/util/log_limit.h"

namespace halloc {

void AuditFailure(absl::string_view path, absl::string_view method,
                  const Session* session, const Identity* caller,
                  const absl::Status& status) {
  const absl::StatusCode code = status.code();
  const bool denial = code == absl::StatusCode::kPermissionDenied ||
                      code == absl::StatusCode::kUnauthenticated;
  const bool quota = code == absl::StatusCode::kResourceExhausted;
  if (!denial && !quota && code != absl::StatusCode::kInternal) return;
  static LogLimiter* const limiter = new LogLimiter(20, absl::Seconds(1));
  uint64_t dropped = 0;
  if (!limiter->Allow(absl::StrCat(method, "/", static_cast<int>(code)), &dropped)) {
    return;
  }
  if (caller == nullptr && session != nullptr) caller = &session->creds();
  std::string who = "unauthenticated caller";
  if (caller != nullptr) {
    who = absl::StrCat(session ? absl::StrCat("session ", session->id(), " ") : "",
                       "uid ", caller->uid, " pid ", caller->pid, " exe '",
                       LogSafe(caller->exe), "'");
  }
  LOG(WARNING) << "AUDIT " << method << (denial || quota ? " denied" : " failed")
               << " (" << path << ") for " << who << ": "
               << absl::StatusCodeToString(code) << ": " << LogSafe(status.message())
               << LogLimiter::Dropped(dropped);
}

}  // namespace halloc
