// MetricsServer: hallocd's optional Prometheus endpoint, GET /metrics on a
// loopback TCP address, served by libmicrohttpd (its own thread, a bounded
// number of connections, a timeout for idle ones). Off unless hallocd is
// given --metrics_address.
//
// Only loopback addresses are accepted: the metrics name clients and uids,
// which are for the machine's own monitoring, not the network.
#ifndef HALLOC_SERVICE_METRICS_HTTP_SERVER_H_
#define HALLOC_SERVICE_METRICS_HTTP_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct MHD_Daemon;

namespace halloc {

class MetricsServer {
 public:
  // Renders the exposition text for one scrape (called on the server's
  // thread).
  using Render = std::function<std::string()>;

  // `address`: "127.0.0.1:PORT" (any 127.0.0.0/8 address) or "[::1]:PORT";
  // PORT 0 picks a free port. INVALID_ARGUMENT for anything else.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      absl::string_view address, Render render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port it listens on.
  uint16_t port() const { return port_; }

 private:
  explicit MetricsServer(Render render) : render_(std::move(render)) {}

  const Render render_;
  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_METRICS_HTTP_SERVER_H_
