#include "tests/bench/bench_util.h"

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace halloc::bench {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

Summary Summarize(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(),
                         [](double x) { return !std::isfinite(x); }),
          v.end());
  Summary s;
  s.n = v.size();
  if (v.empty()) {
    s.p50 = s.p90 = s.p99 = s.p999 = s.max = s.mean = std::nan("");
    return s;
  }
  std::sort(v.begin(), v.end());
  auto rank = [&](double q) {
    size_t i = static_cast<size_t>(std::ceil(q * v.size()));
    return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
  };
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  s.p999 = rank(0.999);
  s.max = v.back();
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  return s;
}

std::string FormatSummary(const std::string& prefix, const Summary& s) {
  return absl::StrCat(prefix, ".p50 ", s.p50, "\n", prefix, ".p90 ", s.p90,
                      "\n", prefix, ".p99 ", s.p99, "\n", prefix, ".p99.9 ",
                      s.p999, "\n", prefix, ".max ", s.max, "\n", prefix,
                      ".mean ", s.mean, "\n", prefix, ".n ", s.n, "\n");
}

double CpuChangePct(const std::vector<CallCpus>& calls) {
  if (calls.empty()) return std::nan("");
  auto moved = [](int from, int to) { return from >= 0 && to >= 0 && from != to; };
  size_t changed = 0;
  for (size_t i = 0; i < calls.size(); ++i) {
    if (moved(calls[i].before, calls[i].after) ||
        (i > 0 && moved(calls[i - 1].after, calls[i].before))) {
      ++changed;
    }
  }
  return 100.0 * static_cast<double>(changed) / calls.size();
}

void RaiseFdLimit(bool raise_hard, uint64_t hard) {
  rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (raise_hard && lim.rlim_max < hard) {
    rlimit want{hard, hard};
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) return;
  }
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);
}

Args::Args(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) continue;
    a = a.substr(2);
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      values_[a] = "1";
    } else {
      values_[a.substr(0, eq)] = a.substr(eq + 1);
    }
  }
}

std::string Args::Str(const std::string& key, const std::string& def) const {
  auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

int64_t Args::Int(const std::string& key, int64_t def) const {
  auto it = values_.find(key);
  return it == values_.end() ? def : std::strtoll(it->second.c_str(), nullptr, 0);
}

bool ReadStdinLine(std::string* line) {
  line->clear();
  char c;
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line->push_back(c);
  }
}

double Us(int64_t from_ns, int64_t to_ns) { return (to_ns - from_ns) / 1e3; }

void Say(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

int Fail(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "halloc_bench: %s: %s\n", what.c_str(), status.ToString().c_str());
  return 1;
}

void WaitForDriver() {
  std::string line;
  while (ReadStdinLine(&line)) {
  }
}

}  // namespace halloc::bench
