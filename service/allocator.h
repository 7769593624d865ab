// The allocator core: sessions, buffers, grants, and fd delivery.
//
// This is the transport-independent layer beneath the gRPC adaptor
// (grpc_service.h) and the broker (broker.h), like AOSP's AllocatorHal
// beneath AllocatorImpl. Every method is thread-safe. Bookkeeping is O(1) in
// the number of live buffers: hash maps keyed by id and token.
//
// Identity: a Session is created only by the broker from SO_PEERCRED, and
// found again only by its secret token; no request field can name one.
#ifndef HALLOC_SERVICE_ALLOCATOR_H_
#define HALLOC_SERVICE_ALLOCATOR_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "halloc/v1/allocator.pb.h"
#include "halloc/v1/broker.pb.h"
#include "service/backend/backend.h"
#include "service/fd_channel.h"
#include "service/policy/policy.h"
#include "service/util/reaper.h"
#include "service/util/unique_fd.h"

namespace halloc {

struct Limits {
  // Largest single buffer.
  uint64_t max_buffer_bytes = uint64_t{4} << 30;
  // Most buffers one Allocate call may ask for.
  uint32_t max_count_per_call = 64;
  // Most buffers one session may hold at once.
  uint64_t max_buffers_per_session = 1 << 18;
};

class Session {
 public:
  Session(uint64_t id, std::string token, Identity creds,
          std::shared_ptr<FdChannel> fds)
      : id_(id), token_(std::move(token)), creds_(creds), fds_(std::move(fds)) {}
  uint64_t id() const { return id_; }
  const std::string& token() const { return token_; }
  const Identity& creds() const { return creds_; }
  // Where fds for this session's gRPC calls go (its broker connection).
  FdChannel& fds() const { return *fds_; }

 private:
  friend class Allocator;
  const uint64_t id_;
  const std::string token_;
  const Identity creds_;
  const std::shared_ptr<FdChannel> fds_;
  // Guarded by Allocator::mu_.
  absl::flat_hash_set<uint64_t> buffers_;
  absl::flat_hash_set<uint64_t> grants_;
  bool closed_ = false;
};

class Allocator {
 public:
  Allocator(std::unique_ptr<Backend> backend, Limits limits,
            std::shared_ptr<const Policy> policy = Policy::Default());
  ~Allocator();

  // Replaces the policy (SIGHUP). Decisions already made stand; every later
  // one uses the new policy. Sessions are re-matched at each decision.
  void SetPolicy(std::shared_ptr<const Policy> policy);
  std::shared_ptr<const Policy> policy() const;
  void CountPolicyReloadFailure();

  // Called by the broker for each accepted connection.
  absl::StatusOr<std::shared_ptr<Session>> OpenSession(
      Identity creds, std::shared_ptr<FdChannel> fds);
  // Called by the broker when the connection closes: releases every buffer
  // and grant the session held.
  void CloseSession(uint64_t session_id);
  // The live session with this token; UNAUTHENTICATED otherwise.
  absl::StatusOr<std::shared_ptr<Session>> Authenticate(
      absl::string_view token) const;

  // Allocates for `session`, judged by the session's own identity, fds sent
  // through the session's broker socket (the gRPC path).
  absl::StatusOr<v1::AllocateResponse> Allocate(Session& session,
                                                const v1::AllocateRequest& req);
  // The same for one request whose sender the kernel stamped: `caller` is
  // who the policy judges and charges (see proto/halloc/v1/broker.proto);
  // the buffers are held by `session`; fds go through `channel`.
  absl::StatusOr<v1::AllocateResponse> Allocate(Session& session,
                                                const Identity& caller,
                                                const v1::AllocateRequest& req,
                                                FdChannel& channel);
  absl::Status Release(Session& session, const v1::ReleaseRequest& req);
  absl::StatusOr<v1::BufferInfo> Describe(Session& session, uint64_t id) const;
  absl::StatusOr<v1::ListResponse> List(Session& session, bool all) const;
  v1::StatsResponse Stats() const;
  absl::StatusOr<v1::DumpResponse> Dump(Session& session) const;
  // Same checks as Allocate, through the same code (Plan), no memory. With
  // a session, its policy rule applies as well; without one, only the
  // descriptor and the backend are judged.
  v1::IsSupportedResponse IsSupported(const v1::IsSupportedRequest& req,
                                      const Session* session) const;
  absl::StatusOr<v1::Grant> Share(Session& session, const v1::ShareRequest& req);
  absl::StatusOr<v1::BufferInfo> Import(Session& session,
                                        absl::string_view token);
  absl::Status Revoke(Session& session, uint64_t grant_id);
  absl::StatusOr<v1::BufferInfo> SetMetadata(Session& session,
                                             const v1::SetMetadataRequest& req);

  const Backend& backend() const { return *backend_; }

 private:
  struct Buffer;
  struct Grant;
  struct Plan;

  absl::StatusOr<Plan> MakePlan(const v1::BufferDescriptor& desc,
                                uint32_t count, const Identity* caller) const;
  // Counts `status` against the rule that decided it (decide.h), if any,
  // and returns it.
  absl::Status Counted(absl::Status status) const;
  // One buffer to hand out: its fd goes out carrying `rights` (the fd
  // itself, or a view of it where the backend needs one).
  struct Delivery {
    uint64_t buffer_id;
    uint64_t size;
    const UniqueFd* fd;
  };
  // Sends the fds of `items` in one record on the session's broker socket:
  // all of them are queued for the client, or none.
  absl::Status Deliver(FdChannel& channel, absl::Span<const Delivery> items,
                       const ViewRights& rights,
                       const v1::AllocateResponse* reply);
  // FAILED_PRECONDITION when `rule` limits attach and the backend cannot.
  absl::Status CheckAttachLimit(const Rule& rule) const;
  v1::BufferInfo Info(const Buffer& buffer, uint64_t session_id,
                      bool with_holders) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Drops `session`'s hold on `buffer_id`; frees the buffer when it was the
  // last holder.
  void DropHold(Session& session, uint64_t buffer_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropGrant(uint64_t grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewToken() const;

  const std::unique_ptr<Backend> backend_;
  const Limits limits_;

  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> session_tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Buffer>> buffers_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::unique_ptr<Grant>> grants_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> grant_tokens_ ABSL_GUARDED_BY(mu_);
  uint64_t live_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Quota use per client: "rule/uid" → (buffers, bytes) owned.
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>> charged_
      ABSL_GUARDED_BY(mu_);
  uint64_t allocations_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t releases_total_ ABSL_GUARDED_BY(mu_) = 0;

  mutable absl::Mutex policy_mu_;
  std::shared_ptr<const Policy> policy_ ABSL_GUARDED_BY(policy_mu_);
  mutable absl::flat_hash_map<std::string, uint64_t> denials_
      ABSL_GUARDED_BY(policy_mu_);
  uint64_t reload_failures_ ABSL_GUARDED_BY(policy_mu_) = 0;

  // Dropped buffers are closed here, off the request path and outside mu_
  // (closing the last fd of a large buffer frees its pages).
  Reaper reaper_;
};


}  // namespace halloc

#endif  // HALLOC_SERVICE_ALLOCATOR_H_
