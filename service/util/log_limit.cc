#include "service/util/log_limit.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "google/protobuf/stubs/common.h"
#include "google/protobuf/stubs/logging.h"

namespace halloc {

void LogLimiter::Renew(Budget& b, absl::Time now) const {
  if (now - b.window_start >= window_) {
    b.window_start = now;
    b.used = 0;
  }
}

bool LogLimiter::Room(Budget& b, int limit, absl::Time now) const {
  Renew(b, now);
  return b.used < limit;
}

bool LogLimiter::AllowForAt(absl::string_view kind, uint32_t uid, absl::Time now,
                            uint64_t* dropped) {
  return Decide(kind, per_uid_ > 0 ? std::optional<uint32_t>(uid) : std::nullopt, now, dropped);
}

bool LogLimiter::AllowAt(absl::string_view kind, absl::Time now, uint64_t* dropped) {
  return Decide(kind, std::nullopt, now, dropped);
}

bool LogLimiter::Decide(absl::string_view kind, std::optional<uint32_t> uid, absl::Time now,
                        uint64_t* dropped) {
  absl::MutexLock lock(&mu_);
  Budget& b = budgets_[kind];
  Renew(b, now);
  if (b.used >= per_window_) {
    ++b.dropped;
    return false;
  }
  if (uid) {
    if (uid_budgets_.size() >= std::max(sweep_at_, size_t{4} * static_cast<size_t>(per_window_))) {
      absl::erase_if(uid_budgets_,
                     [&](const auto& e) { return now - e.second.window_start >= window_; });
      sweep_at_ = 2 * uid_budgets_.size();
    }
    // Looked up again to count: a second insertion may move the first.
    const std::pair<std::string, uint32_t> mine{std::string(kind), *uid};
    const std::pair<std::string, uint32_t> all{std::string(), *uid};
    if (!Room(uid_budgets_[mine], per_uid_, now) ||
        (per_uid_all_kinds_ > 0 && !Room(uid_budgets_[all], per_uid_all_kinds_, now))) {
      ++b.dropped;
      return false;
    }
    ++uid_budgets_[mine].used;
    if (per_uid_all_kinds_ > 0) ++uid_budgets_[all].used;
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

std::string LogSafe(absl::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return LogSafe(s);
  return absl::StrCat(LogSafe(s.substr(0, max_bytes)), "...(", s.size(), " bytes)");
}

std::string Utf8OrEscaped(absl::string_view s) {
  if (google::protobuf::internal::IsStructurallyValidUTF8(s.data(),
                                                          static_cast<int>(s.size()))) {
    return std::string(s);
  }
  return LogSafe(s);
}

namespace {

// Whose data this thread parses (ScopedParseUid), if anyone's.
thread_local std::optional<uint32_t> parse_uid;

void LimitedProtobufLog(google::protobuf::LogLevel level, const char* filename, int line,
                        const std::string& message) {
  static LogLimiter* const limiter = new LogLimiter(5, absl::Seconds(1), /*per_uid=*/2);
  uint64_t dropped = 0;
  // A FATAL line comes before libprotobuf aborts: never dropped.
  if (level != google::protobuf::LOGLEVEL_FATAL &&
      !(parse_uid ? limiter->AllowFor("libprotobuf", *parse_uid, &dropped)
                  : limiter->Allow("libprotobuf", &dropped))) {
    return;
  }
  const std::string text = absl::StrCat("libprotobuf ", LogSafe(filename, 128), ":", line, ": ",
                                        LogSafe(message, 512), LogLimiter::Dropped(dropped));
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO:
      LOG(INFO) << text;
      break;
    case google::protobuf::LOGLEVEL_WARNING:
      LOG(WARNING) << text;
      break;
    default:
      LOG(ERROR) << text;
      break;
  }
}

}  // namespace

void LimitProtobufLogs() { google::protobuf::SetLogHandler(&LimitedProtobufLog); }

ScopedParseUid::ScopedParseUid(uint32_t uid) : outer_(std::exchange(parse_uid, uid)) {}

ScopedParseUid::~ScopedParseUid() { parse_uid = outer_; }

}  // namespace halloc
