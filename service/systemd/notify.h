// hallocd's side of systemd's notify protocol (sd_notify(3)): readiness,
// status lines, reload and stop, and the watchdog. Without NOTIFY_SOCKET
// (not started by systemd as Type=notify) every call does nothing.
#ifndef HALLOC_SERVICE_SYSTEMD_NOTIFY_H_
#define HALLOC_SERVICE_SYSTEMD_NOTIFY_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace halloc {

// Sends `state` ("READY=1\nSTATUS=...") to the service manager, if any.
void Notify(absl::string_view state);

// Pings the watchdog (WATCHDOG=1) every quarter WatchdogSec= (plus the
// probe's time) while `alive` says hallocd still serves, and for grace()
// after its last answer: a hallocd silent for longer stops the pings and
// systemd restarts it; one failed probe does not.
class Watchdog {
 public:
  // `alive` gets a timeout (an eighth of WatchdogSec=) and returns OK when
  // the daemon answered within it.
  using Probe = std::function<absl::Status(absl::Duration timeout)>;

  // nullptr when the service has no watchdog (WATCHDOG_USEC unset, or set
  // for another pid).
  static std::unique_ptr<Watchdog> StartIfEnabled(Probe alive);
  ~Watchdog();  // stops pinging

  absl::Duration interval() const { return interval_; }
  // How long pings go on without an answer: three quarters of WatchdogSec=.
  absl::Duration grace() const { return 3 * interval_; }

 private:
  Watchdog(Probe alive, absl::Duration interval);
  void Run();

  const Probe alive_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_SYSTEMD_NOTIFY_H_
