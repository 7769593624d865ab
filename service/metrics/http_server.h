// MetricsServer: hallocd's optional Prometheus endpoint, GET /metrics on a
// loopback TCP address, served by libmicrohttpd (its own thread, a bounded
// number of connections, a timeout for idle ones, one request per
// connection, and a deadline for each connection from its accept: one that
// takes longer than request_deadline is cut, so a local user who trickles
// bytes in, or keeps a connection alive with a cheap request now and then,
// cannot hold the connection slots the scraper needs), at most 4 at once
// per uid of the process at the other end (asked of the kernel:
// loopback_peer.h; any local user may connect from any 127.0.0.0/8
// address, so a limit per address bounds no one). What libmicrohttpd reports goes
// to hallocd's log rate-limited and escaped: its lines are triggered by
// whoever connects. Any local user may scrape as often as it likes: the
// text is rendered at most once a second (Options::render_interval). Off
// unless hallocd is given --metrics_address.
//
// Only loopback addresses are accepted: the metrics name clients and uids,
// which are for the machine's own monitoring, not the network.
#ifndef HALLOC_SERVICE_METRICS_HTTP_SERVER_H_
#define HALLOC_SERVICE_METRICS_HTTP_SERVER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/metrics/loopback_peer.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace halloc {

class MetricsServer {
 public:
  // Renders the exposition text for one scrape (called on the server's
  // thread).
  using Render = std::function<std::string()>;

  struct Options {
    // Longest a connection may take from its start, or from its last whole
    // request, to a whole request.
    absl::Duration request_deadline = absl::Seconds(10);
    // A scrape within this long of the last render gets that render's
    // text: however often anyone scrapes, `render` (hallocd's Stats, a
    // reaper flush and the registry's lock) runs at most once per interval.
    absl::Duration render_interval = absl::Seconds(1);
    // The scraper's uids (hallocd's --metrics_scraper_uids). When given,
    // connections from every other uid share half the slots (kOthers),
    // so that the scraper always has the other half: a user with
    // subordinate uids (newuidmap: 65,536 on a Debian login) connects as
    // that many uids, and 4 each from five of them held every slot.
    std::vector<uid_t> scraper_uids;
    // Whose process is at the other end of a connection (tests stand in).
    // Checked at Start (CheckLoopbackPeerLookup): where it cannot tell, an
    // error is logged and every connection counts as one unknown uid's
    // (4 slots for all of them) rather than as no one's: the limits fail
    // closed.
    PeerUidLookup peer_uid = LoopbackPeerUid;
  };
  // Slots (of libmicrohttpd's 16) that connections from uids other than
  // Options::scraper_uids share, when those are given.
  static constexpr int kOthers = 8;

  // `address`: "127.0.0.1:PORT" (any 127.0.0.0/8 address) or "[::1]:PORT";
  // PORT 0 picks a free port. INVALID_ARGUMENT for anything else.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(absl::string_view address,
                                                              Render render);
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(absl::string_view address,
                                                              Render render,
                                                              const Options& options);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port it listens on.
  uint16_t port() const { return port_; }

 private:
  struct Deadlines;  // the connections open, and the thread that cuts them
  MetricsServer(Render render, const Options& options);

  const Render render_;
  std::unique_ptr<Deadlines> deadlines_;
  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_METRICS_HTTP_SERVER_H_
