// The allocator core: judges each request with policy/ (decide.h), takes
// memory from the backend, records the outcome in the registry
// (registry.h) and hands fds to the session's FdChannel (fd_channel.h).
//
// This is the transport-independent layer beneath the gRPC adaptor
// (grpc_service.h) and the broker (broker.h), like AOSP's AllocatorHal
// beneath AllocatorImpl. Every method is thread-safe.
//
// Identity: a Session is created only by the broker from SO_PEERCRED, and
// found again only by its secret token (sessions.h); no request field can
// name one.
#ifndef HALLOC_SERVICE_ALLOCATOR_H_
#define HALLOC_SERVICE_ALLOCATOR_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "halloc/v1/allocator.pb.h"
#include "halloc/v1/broker.pb.h"
#include "service/backend/backend.h"
#include "service/fd_channel.h"
#include "service/metrics/histogram.h"
#include "service/policy/policy.h"
#include "service/registry.h"
#include "service/sessions.h"

namespace halloc {

struct Limits {
  // Largest single buffer.
  uint64_t max_buffer_bytes = uint64_t{4} << 30;
  // Most buffers one Allocate call may ask for.
  uint32_t max_count_per_call = 64;
  // Most buffers one session may hold at once.
  uint64_t max_buffers_per_session = 1 << 18;
  // Most buffers hallocd holds at once, live or released and still in use
  // (Registry::SetMaxBuffers); 0: what its fd limit leaves after the
  // policy's connections and the backend's stock (BufferRoom).
  uint64_t max_buffers = 0;
};

class Allocator {
 public:
  Allocator(std::unique_ptr<Backend> backend, Limits limits,
            std::shared_ptr<const Policy> policy = Policy::Default());
  ~Allocator();

  // Replaces the policy (SIGHUP). Decisions already made stand; every later
  // one uses the new policy. Sessions are re-matched at each decision; so
  // are both sides of a grant at each Import of it (a grant the sharer's
  // rule no longer allows is no longer imported). Its
  // connection limits set how many buffers hallocd may hold (Limits).
  void SetPolicy(std::shared_ptr<const Policy> policy);
  std::shared_ptr<const Policy> policy() const;
  void CountPolicyReloadFailure();

  // Called by the broker for each accepted connection; `process`: the
  // one that opened it (SessionProcess).
  absl::StatusOr<std::shared_ptr<Session>> OpenSession(Identity creds,
                                                       std::shared_ptr<FdChannel> fds,
                                                       SessionProcess process = SessionProcess());
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
  // the buffers are held by `session`; fds go through `channel`. Without
  // `may_wait` (the broker's thread), a quota refusal that waiting for
  // released memory to be freed might lift comes back, uncounted, with
  // payload Registry::kWaitForReleasedMemory: ask again where waiting is
  // allowed.
  absl::StatusOr<v1::AllocateResponse> Allocate(Session& session,
                                                const Identity& caller,
                                                const v1::AllocateRequest& req,
                                                FdChannel& channel,
                                                bool may_wait = true);
  // All or nothing: NOT_FOUND (nothing released) if the session does not
  // hold one of the ids; INVALID_ARGUMENT past max_release_ids().
  absl::Status Release(Session& session, const v1::ReleaseRequest& req);
  // Gives back buffers an Allocate made that its caller will never learn
  // of (undelivered, or its deadline passed), one by one: whoever else
  // speaks for the session (another process holding its socket, a gRPC
  // thread with its token) may have released one of these guessable ids
  // meanwhile, and an all-or-nothing Release would then keep the others
  // until the session ends.
  void UndoAllocate(Session& session, const v1::AllocateResponse& made);
  // The most ids one Release names: the most buffers a session may hold.
  uint64_t max_release_ids() const { return limits_.max_buffers_per_session; }
  // INVALID_ARGUMENT when a Release names `count` ids, past max_release_ids()
  // (a ReleaseMany stream asks as its parts come, to stop reading early).
  absl::Status CheckReleaseIds(uint64_t count) const;
  absl::StatusOr<v1::BufferInfo> Describe(Session& session, uint64_t id) const;
  // One page of ListRequest's (at most kMaxListPage buffers).
  absl::StatusOr<v1::ListResponse> List(Session& session, const v1::ListRequest& req) const;
  static constexpr uint32_t kMaxListPage = 1000;
  // Daemon-wide counters. `only_uid`: a caller who is no operator (see
  // IsOperatorUid in connection_limits.h), shown only its own uid's per-client rows and no denials;
  // nullopt: everything (operators, the metrics endpoint).
  v1::StatsResponse Stats(std::optional<uid_t> only_uid = std::nullopt);
  // One page of DumpRequest's (at most kMaxDumpPage rows).
  static constexpr uint32_t kMaxDumpPage = 1000;
  absl::StatusOr<v1::DumpResponse> Dump(Session& session, const v1::DumpRequest& req);
  // Same checks as Allocate, through the same code (Plan), no memory. With
  // a caller (a session's, or a broker request's sender), its policy rule
  // applies as well; without one, only the descriptor and the backend are
  // judged. `reader`: the session whose socket it came on, as for Allocate.
  v1::IsSupportedResponse IsSupported(const v1::IsSupportedRequest& req, const Identity* caller,
                                      const Identity* reader = nullptr) const;
  // Bytes `req` would allocate (all its buffers, each rounded to pages),
  // from the same plan as Allocate; 0 when the descriptor is refused.
  uint64_t PlannedBytes(const v1::AllocateRequest& req) const;
  // Shares a buffer `session` holds, the session's own identity the sharer
  // (the gRPC path).
  absl::StatusOr<v1::Grant> Share(Session& session, const v1::ShareRequest& req);
  // The same with `caller`, whom the kernel stamped on the request, as the
  // sharer (judged as for Allocate; another uid than the session's:
  // PERMISSION_DENIED, as on gRPC).
  absl::StatusOr<v1::Grant> Share(Session& session, const Identity& caller,
                                  const v1::ShareRequest& req);
  // Imports for `session`, judged by the session's own identity, the fd
  // sent through the session's broker socket ahead of the answer (the gRPC
  // path); `call_id` goes back in the fd's BufferFd (ImportRequest.call_id).
  // `gave_up`, asked once the fd went: true when the caller will never see
  // the answer (its gRPC deadline passed; libhalloc then drops the fd,
  // AbandonCall), so a hold this import made goes as if the fd had not
  // arrived, rather than pin the buffer until the session ends.
  absl::StatusOr<v1::ImportResponse> Import(
      Session& session, absl::string_view token, uint64_t call_id = 0,
      absl::FunctionRef<bool()> gave_up = [] { return false; });
  // The same for one request whose sender the kernel stamped (`caller`, as
  // for Allocate; another uid than the session's: PERMISSION_DENIED, as on
  // gRPC); the fd and the answer go through `channel`
  // (FdChannel::SendImport).
  absl::StatusOr<v1::ImportResponse> Import(
      Session& session, const Identity& caller, absl::string_view token, uint64_t call_id,
      FdChannel& channel, absl::FunctionRef<bool()> gave_up = [] { return false; });
  // Withdraws a grant; on a backend that can (CanRevokeLive), also cuts
  // off every fd imported through it, in every process (registry.h).
  absl::Status Revoke(Session& session, uint64_t grant_id);
  // The same for one request the kernel stamped (`caller`; another uid than
  // the session's: PERMISSION_DENIED, as on gRPC).
  absl::Status Revoke(Session& session, const Identity& caller, uint64_t grant_id);
  absl::StatusOr<v1::BufferInfo> SetMetadata(Session& session,
                                             const v1::SetMetadataRequest& req);
  // The same for one request the kernel stamped (`caller`; another uid than
  // the session's: PERMISSION_DENIED, as on gRPC: every holder reads what
  // it sets).
  absl::StatusOr<v1::BufferInfo> SetMetadata(Session& session, const Identity& caller,
                                             const v1::SetMetadataRequest& req);

  const Backend& backend() const { return *backend_; }

 private:
  struct Plan;

  // How many buffers hallocd may hold under `policy` (Limits::max_buffers).
  uint64_t MaxBuffers(const Policy& policy) const;

  // `reader`: the session whose socket the fds go to, where it may not be
  // the caller (a request on another's socket).
  absl::StatusOr<Plan> MakePlan(const v1::BufferDescriptor& desc, uint32_t count,
                                const Identity* caller, const Identity* reader = nullptr) const;
  // Counts `status` against the rule that decided it (decide.h), if any,
  // and returns it.
  absl::Status Counted(absl::Status status) const;
  // The fds of `buffers` each carrying `rights`: the daemon's fd itself,
  // or a view of it where the backend needs one, or with `revocable`
  // always a view the backend can revoke (ids in view_ids).
  struct Outgoing {
    std::vector<UniqueFd> views;
    std::vector<uint64_t> view_ids;
    std::vector<int> fds;
    v1::BufferFds info;
  };
  absl::StatusOr<Outgoing> Prepare(absl::Span<const BufferRecord* const> buffers,
                                   const ViewRights& rights, bool revocable);
  // Sends the fds of `buffers` (Prepare) in one record on `channel`: all of
  // them are queued for the client, or none. Each BufferFd carries
  // `call_id` (AllocateRequest.call_id).
  absl::Status Deliver(FdChannel& channel, absl::Span<const BufferRecord* const> buffers,
                       const ViewRights& rights, uint64_t call_id,
                       const v1::AllocateResponse* reply);
  // FAILED_PRECONDITION when `rule` limits attach and the backend cannot.
  absl::Status CheckAttachLimit(const Rule& rule) const;
  static Backend::Holder HolderOf(const Identity& id);
  // The first of `holders` (whom an fd would reach) an fd limited to
  // `access` would not bind (Backend::CanEnforceFor), if any.
  std::optional<Backend::Holder> Unbound(CpuAccess access,
                                         absl::Span<const Backend::Holder> holders) const;
  // Whether the backend can limit an fd to `access`, for each of `holders`
  // (none: not known yet, checked again when they are).
  bool Enforceable(CpuAccess access, absl::Span<const Backend::Holder> holders) const;
  // FAILED_PRECONDITION when !Enforceable(access, holders), saying why.
  absl::Status CheckEnforce(CpuAccess access, absl::Span<const Backend::Holder> holders,
                            absl::string_view why) const;

  const std::unique_ptr<Backend> backend_;
  const Limits limits_;
  SessionTable sessions_;
  Registry registry_;
  LatencyHistogram allocate_latency_;

  // Order: reload_mu_, then the registry's. policy_mu_ and denials_mu_
  // are leaves: denials are counted from judges the registry calls under
  // its lock.
  absl::Mutex reload_mu_ ABSL_ACQUIRED_BEFORE(policy_mu_);
  mutable absl::Mutex policy_mu_;
  std::shared_ptr<const Policy> policy_ ABSL_GUARDED_BY(policy_mu_);
  uint64_t reload_failures_ ABSL_GUARDED_BY(policy_mu_) = 0;
  mutable absl::Mutex denials_mu_;
  mutable absl::flat_hash_map<std::string, uint64_t> denials_
      ABSL_GUARDED_BY(denials_mu_);
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_ALLOCATOR_H_
