#include "service/util/log_limit.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/common.h"

namespace halloc {

bool LogLimiter::AllowAt(absl::string_view kind, absl::Time now, uint64_t* dropped) {
  absl::MutexLock lock(&mu_);
  Budget& b = budgets_[kind];
  if (now - b.window_start >= window_) {
    b.window_start = now;
    b.used = 0;
  }
  if (b.used >= per_window_) {
    ++b.dropped;
    return false;
  }
  ++b.used;
  *dropped = b.dropped;
  b.dropped = 0;
  return true;
}

std::string LogLimiter::Dropped(uint64_t n) {
  return n == 0 ? std::string() : absl::StrCat(" (", n, " similar lines dropped)");
}

std::string LogSafe(absl::string_view s) { return absl::CHexEscape(s); }

std::string Utf8OrEscaped(absl::string_view s) {
  if (google::protobuf::internal::IsStructurallyValidUTF8(s.data(),
                                                          static_cast<int>(s.size()))) {
    return std::string(s);
  }
  return LogSafe(s);
}

}  // namespace halloc
