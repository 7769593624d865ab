// LogLines (tests): the lines hallocd logs through glog that start with a
// prefix, captured while it lives, from whichever thread logs them.
#ifndef HALLOC_SERVICE_UTIL_LOG_LINES_TESTING_H_
#define HALLOC_SERVICE_UTIL_LOG_LINES_TESTING_H_

#include <glog/logging.h>

#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace halloc {

class LogLines : public google::LogSink {
 public:
  explicit LogLines(std::string prefix) : prefix_(std::move(prefix)) { google::AddLogSink(this); }
  ~LogLines() override { google::RemoveLogSink(this); }
  LogLines(const LogLines&) = delete;
  LogLines& operator=(const LogLines&) = delete;

  void send(google::LogSeverity, const char*, const char*, int, const std::tm*,
            const char* message, size_t size) override {
    const absl::string_view line(message, size);
    if (!absl::StartsWith(line, prefix_)) return;
    absl::MutexLock lock(&mu_);
    lines_.emplace_back(line);
  }
  std::vector<std::string> lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }
  // How many of them contain `text`.
  int Count(absl::string_view text) {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const std::string& line : lines_) n += absl::StrContains(line, text) ? 1 : 0;
    return n;
  }

 private:
  const std::string prefix_;
  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

// Expects the lines of `lines` that contain `text`, logged from about
// `start` on by a LogLimiter with `per_uid` lines a one-second window for
// one uid, to be at least one and no more than one uid's share: `per_uid`
// if they came within 900 ms of `start`, twice that within 2 s (the window
// may have turned over once); later than that they are not judged.
inline void ExpectOneUidsShare(LogLines& lines, absl::string_view text, int per_uid,
                               absl::Time start) {
  const int n = lines.Count(text);
  EXPECT_GE(n, 1) << "no line with '" << text << "' logged";
  const absl::Duration took = absl::Now() - start;
  if (took < absl::Seconds(2)) {
    EXPECT_LE(n, took < absl::Milliseconds(900) ? per_uid : 2 * per_uid) << "in " << took;
  }
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LOG_LINES_TESTING_H_
