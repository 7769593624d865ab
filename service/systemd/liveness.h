// Whether hallocd serves, seen from outside as a client sees it: the
// watchdog's probe. The broker must accept a connection and greet it (so its
// thread still loops), and the control socket must answer
// grpc.health.v1.Health/Check with SERVING (so gRPC still runs calls).
#ifndef HALLOC_SERVICE_SYSTEMD_LIVENESS_H_
#define HALLOC_SERVICE_SYSTEMD_LIVENESS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace halloc {

class LivenessProbe {
 public:
  LivenessProbe(std::string control_socket, std::string broker_socket);

  // OK when both answered within `timeout` each (its connection, which
  // waits for room in a full backlog, included); else why not.
  absl::Status Check(absl::Duration timeout);

 private:
  absl::Status CheckBroker(absl::Duration timeout) const;
  absl::Status CheckControl(absl::Duration timeout);

  const std::string control_socket_;
  const std::string broker_socket_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_SYSTEMD_LIVENESS_H_
