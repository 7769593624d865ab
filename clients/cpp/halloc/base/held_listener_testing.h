// A stand-in for a daemon's Unix listener whose backlog other processes
// keep full: any local user can, connecting and closing in a loop faster
// than the daemon accepts, and a non-blocking connect then fails at once
// (EAGAIN). Clients and probes must wait for room, not give up.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_HELD_LISTENER_TESTING_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_HELD_LISTENER_TESTING_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc::testing {

// A listener on `path` with a backlog of one, of `type` (SOCK_STREAM,
// SOCK_SEQPACKET), that accepts only once told to (Open) and hands each
// connection, non-blocking, to `serve` on its own thread.
class HeldListener {
 public:
  HeldListener(const std::string& path, int type, std::function<void(UniqueFd)> serve);
  ~HeldListener();  // stops accepting
  HeldListener(const HeldListener&) = delete;
  HeldListener& operator=(const HeldListener&) = delete;

  // Takes the backlog's one place with a connection of its own; true when
  // the next non-blocking connect then fails EAGAIN (the backlog is full).
  bool Fill();
  // Accepts from now on (after `delay`); the filler's connection too.
  void Open(absl::Duration delay = absl::ZeroDuration());

 private:
  const std::string path_;
  const int type_;
  std::function<void(UniqueFd)> serve_;
  UniqueFd fd_;
  UniqueFd filler_;
  std::thread thread_;
};

}  // namespace halloc::testing

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_HELD_LISTENER_TESTING_H_
