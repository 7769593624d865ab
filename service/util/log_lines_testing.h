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

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LOG_LINES_TESTING_H_
