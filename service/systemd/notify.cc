#include "service/systemd/notify.h"

#include <glog/logging.h>
#include <systemd/sd-daemon.h>

#include <cstdint>
#include <cstring>
#include <string>

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
  std::unique_ptr<Watchdog> w(new Watchdog(std::move(alive), absl::Microseconds(usec) / 2));
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
  bool failing = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
    }
    const absl::Status status = alive_(interval_ / 2);
    if (status.ok()) {
      Notify("WATCHDOG=1");
      if (failing) LOG(INFO) << "watchdog: hallocd answers again";
    } else if (!failing) {
      LOG(ERROR) << "watchdog: hallocd does not answer, not pinging systemd: " << status;
    }
    failing = !status.ok();
  }
}

}  // namespace halloc
