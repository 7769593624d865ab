// Sessions: who a connection is, and the secret that names it.
//
// A Session is created only by the broker, from the identity the kernel
// gave it (SO_PEERCRED, the verified handshake), and found again only by its
// secret token: no request field can name one. What a session holds
// (buffers, grants) is the registry's business (registry.h); this table
// only maps tokens to identities and fd channels, under its own lock, so
// authenticating a gRPC call never waits for the registry.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_SESSIONS_H_
#define HALLOC_SERVICE_SESSIONS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/shared_fd.h"
#include "service/fd_channel.h"
#include "service/policy/policy.h"

namespace halloc {

// The process that opened a session (its creds().pid), so that a call on
// another transport can tell whether it comes from that process: a pidfd
// pinning it (is that pid still that process? RequestIdentity), and when it
// started (ProcessStart: did that process make the connection?). Empty
// when not known: then a call from that pid is judged by uid and gid.
struct SessionProcess {
  SharedFd pidfd;
  std::optional<uint64_t> start;
};

class Session {
 public:
  Session(uint64_t id, std::string token, Identity creds, std::shared_ptr<FdChannel> fds,
          SessionProcess process = SessionProcess())
      : id_(id),
        token_(std::move(token)),
        creds_(std::move(creds)),
        fds_(std::move(fds)),
        process_(std::move(process)) {}
  uint64_t id() const { return id_; }
  const std::string& token() const { return token_; }
  const Identity& creds() const { return creds_; }
  // Where fds for this session's gRPC calls go (its broker connection).
  FdChannel& fds() const { return *fds_; }
  // The process that opened the session, pinned (see SessionProcess).
  int pidfd() const { return process_.pidfd.get(); }
  const std::optional<uint64_t>& process_start() const { return process_.start; }

 private:
  const uint64_t id_;
  const std::string token_;
  const Identity creds_;
  const std::shared_ptr<FdChannel> fds_;
  const SessionProcess process_;
};

class SessionTable {
 public:
  // A new session with a fresh 128-bit token. Ids are never reused.
  std::shared_ptr<Session> Open(Identity creds, std::shared_ptr<FdChannel> fds,
                                SessionProcess process = SessionProcess());
  // Forgets the session (its token stops working at once); nullptr when
  // there was none. Calls already holding the Session keep their reference.
  std::shared_ptr<Session> Close(uint64_t id);
  // The live session with this token; UNAUTHENTICATED otherwise.
  absl::StatusOr<std::shared_ptr<Session>> Authenticate(
      absl::string_view token) const;
  // nullptr when `id` is closed or never was.
  std::shared_ptr<Session> Find(uint64_t id) const;
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Session>> by_id_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> by_token_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_SESSIONS_H_
