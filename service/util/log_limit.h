// Rate limits for log lines an outsider can trigger (a refused connection,
// a denied request, a full fd table): each kind of line gets a budget per
// second, and the first line after a quiet spell says how many were
// dropped. A flood then costs a few lines a second, not the disk.
//
//   static LogLimiter limiter;
//   if (uint64_t dropped; limiter.Allow("accept4", &dropped)) {
//     LOG(WARNING) << "accept4 failed" << LogLimiter::Dropped(dropped);
//   }
#ifndef HALLOC_SERVICE_UTIL_LOG_LIMIT_H_
#define HALLOC_SERVICE_UTIL_LOG_LIMIT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/util/clock.h"

namespace halloc {

class LogLimiter {
 public:
  // At most `per_window` lines of each kind per `window`, and of those at
  // most `per_uid` for one uid (AllowFor; 0: no share per uid), and at most
  // `per_uid_all_kinds` for one uid of all kinds together (0: no such cap;
  // else a uid that takes its share of many kinds in turn gets no more;
  // like the share per uid, only with per_uid > 0).
  explicit LogLimiter(int per_window = 10, absl::Duration window = absl::Seconds(1),
                      int per_uid = 0, int per_uid_all_kinds = 0)
      : per_window_(per_window),
        per_uid_(per_uid),
        per_uid_all_kinds_(per_uid_all_kinds),
        window_(window) {}

  // Whether a line of `kind` may be logged now. When it may, `*dropped` is
  // how many of that kind were refused since the last one logged.
  bool Allow(absl::string_view kind, uint64_t* dropped) { return AllowAt(kind, MonotonicNow(), dropped); }
  bool AllowAt(absl::string_view kind, absl::Time now, uint64_t* dropped);
  // The same for a line about `uid` (who asked): a uid that floods a kind
  // of line takes its share of the budget, not all of it, so others' lines
  // of that kind still come through.
  bool AllowFor(absl::string_view kind, uint32_t uid, uint64_t* dropped) {
    return AllowForAt(kind, uid, MonotonicNow(), dropped);
  }
  bool AllowForAt(absl::string_view kind, uint32_t uid, absl::Time now, uint64_t* dropped);
  // Per-uid budgets kept now (a few windows' worth at most).
  size_t uids_tracked() {
    absl::MutexLock lock(&mu_);
    return uid_budgets_.size();
  }

  // " (N similar lines dropped)" or "".
  static std::string Dropped(uint64_t n);

 private:
  struct Budget {
    absl::Time window_start;
    int used = 0;
    uint64_t dropped = 0;
  };
  // Budget `b` renewed for the window `now` falls in.
  void Renew(Budget& b, absl::Time now) const;
  // Whether `b`, renewed, has used fewer than `limit` lines.
  bool Room(Budget& b, int limit, absl::Time now) const;
  // A line of `kind` against its budget, and with `uid` against that uid's
  // share of it too.
  bool Decide(absl::string_view kind, std::optional<uint32_t> uid, absl::Time now,
              uint64_t* dropped);

  const int per_window_;
  const int per_uid_;
  const int per_uid_all_kinds_;
  const absl::Duration window_;
  absl::Mutex mu_;
  // Kinds are a few fixed strings chosen by the daemon, never client data.
  absl::flat_hash_map<std::string, Budget> budgets_ ABSL_GUARDED_BY(mu_);
  // Per kind and uid (and per uid for all kinds, kind ""), made only while
  // the kind had room (so at most 2 * per_window_ a window), and dropped
  // once their window is over.
  absl::flat_hash_map<std::pair<std::string, uint32_t>, Budget> uid_budgets_ ABSL_GUARDED_BY(mu_);
  // Swept again once it holds this many (twice what the last sweep left).
  size_t sweep_at_ ABSL_GUARDED_BY(mu_) = 0;
};

// `s` with control characters, non-ASCII bytes, quotes and backslashes
// escaped (absl::CHexEscape): safe to put in a log line whatever a client
// sent (a newline in an executable's path cannot forge a line).
std::string LogSafe(absl::string_view s);
// The same for at most the first `max_bytes` of `s`, then how long it was:
// for text a client may make long (an executable's path, up to 4 KiB, each
// byte escaped to 4).
std::string LogSafe(absl::string_view s, size_t max_bytes);
// What of an executable's path a log line shows.
inline constexpr size_t kLoggedPathBytes = 256;
// What of a refusal's message an AUDIT line shows (messages quote the
// request: escaped, any of it long is cut before; this bounds the rest).
inline constexpr size_t kLoggedMessageBytes = 1024;

// `s` itself when it is valid UTF-8, as a proto3 `string` field must be
// (by protobuf's own check), else LogSafe(s): for client-controlled text
// put in such a field (an executable's path), which would otherwise make
// the message fail to parse at its reader and protobuf log a line per
// message serialized.
std::string Utf8OrEscaped(absl::string_view s);

// Sends libprotobuf's own log lines (e.g. "String field ... contains
// invalid UTF-8 data when parsing", once per message a client sends so)
// through a LogLimiter of their own and glog, escaped and cut to 512 bytes.
// libprotobuf otherwise writes each straight to stderr. For the process:
// hallocd's main calls it once. A line logged while this thread parses a
// uid's data (ScopedParseUid: the broker's requests) takes that uid's
// share of the budget, so one uid's flood of bad strings there does not
// hide everyone else's. Parses on gRPC's threads and the broker's
// handshake are not attributed (they draw on the shared budget, which a
// uid's share is also taken from).
void LimitProtobufLogs();

// Names `uid` as the one whose data this thread parses, until destroyed
// (nested: the outer one comes back). For libprotobuf's lines, which say
// nothing of whose message they are about.
class ScopedParseUid {
 public:
  explicit ScopedParseUid(uint32_t uid);
  ~ScopedParseUid();
  ScopedParseUid(const ScopedParseUid&) = delete;
  ScopedParseUid& operator=(const ScopedParseUid&) = delete;

 private:
  std::optional<uint32_t> outer_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LOG_LIMIT_H_
