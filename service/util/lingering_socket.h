// Tests' stand-in for a file whose last close waits as long as its owner
// likes: a TCP socket on loopback with SO_LINGER and data its peer never
// takes. The peer is a connection its listener never accepts, with a small
// receive buffer, so the socket's FIN waits behind unsent data and its
// release (where its last reference is dropped) waits out the linger time.
// What a client may send hallocd to hold up whichever thread drops it.
#ifndef HALLOC_SERVICE_UTIL_LINGERING_SOCKET_H_
#define HALLOC_SERVICE_UTIL_LINGERING_SOCKET_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

struct LingeringSocket {
  // `linger` is rounded down to whole seconds (at least 1).
  static absl::StatusOr<LingeringSocket> Create(absl::Duration linger);
  // Ends the wait of whoever is releasing `sock`: closing the listener
  // resets the connection it never accepted.
  void Release() { listener.reset(); }

  UniqueFd sock;      // the lingering socket
  UniqueFd listener;  // its peer's listener
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_LINGERING_SOCKET_H_
