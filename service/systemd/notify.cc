#include "service/systemd/notify.h"

#include <glog/logging.h>
#include <systemd/sd-daemon.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "service/util/clock.h"

namespace halloc {

void Notify(absl::string_view state) {
  const int r = sd_notify(/*unset_environment=*/0, std::string(state).c_str());
  if (r < 0) {
    LOG_EVERY_N(WARNING, 100) << "sd_notify(" << state << "): " << std::strerror(-r);
  }
}

std::unique_ptr<Watchdog> Watchdog::StartIfEnabled(Probe alive) {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(/*unset_environment=*/0, &usec) <= 0 || usec == 0) return nullptr;
  std::unique_ptr<Watchdog> w(new Watchdog(std::move(alive), absl::Microseconds(usec) / 4));
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

Watchdog::Watchdog(Probe alive, absl::Duration interval)
    : alive_(std::move(alive)), interval_(interval) {}

Watchdog::~Watchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Watchdog::Run() {
  // A round is the wait (interval_) and the probe (two checks of
  // interval_ / 2 at most): half WatchdogSec= between pings at the most.
  // Pings go on for grace() after the last answer, so that one refused or
  // slow probe (a flood of calls taking gRPC's threads for a moment) does
  // not get hallocd killed, and every session with it; a hallocd that stays
  // silent stops them, and systemd restarts it.
  absl::Time last_answer = MonotonicNow();
  bool failing = false, silent = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
    }
    const absl::Status status = alive_(interval_ / 2);
    const absl::Time now = MonotonicNow();
    if (status.ok()) {
      if (failing) LOG(INFO) << "watchdog: hallocd answers again";
      last_answer = now;
      failing = silent = false;
      Notify("WATCHDOG=1");
      continue;
    }
    if (!failing) LOG(ERROR) << "watchdog: hallocd does not answer: " << status;
    failing = true;
    if (now - last_answer < grace()) {
      Notify("WATCHDOG=1");
    } else if (!silent) {
      LOG(ERROR) << "watchdog: no answer for " << absl::FormatDuration(now - last_answer)
                 << ", not pinging systemd";
      silent = true;
    }
  }
}

}  // namespace halloc
