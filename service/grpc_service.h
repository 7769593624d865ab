// The gRPC adaptor: halloc.v1.Allocator on top of the Allocator core.
//
// Thin by design: it resolves the caller's session from the
// `halloc-session` metadata (good only on a connection of the session's
// own uid: control_peers.h), calls the core, converts absl::Status to
// grpc::Status, and logs denials and failures with their context.
#ifndef HALLOC_SERVICE_GRPC_SERVICE_H_
#define HALLOC_SERVICE_GRPC_SERVICE_H_

#include <sys/types.h>

#include <functional>
#include <optional>

#include "clients/cpp/halloc/base/protocol.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "service/allocator.h"
#include "service/calls_per_uid.h"
#include "service/control_peers.h"
#include "service/stream_deadlines.h"
#include "service/util/stream_slots.h"

namespace halloc {

grpc::Status ToGrpc(const absl::Status& status);

// halloc.v1.Allocator's methods, registered here rather than by the
// generated v1::Allocator::Service so that each unary method parses its
// request itself (grpc_methods.h); clients use the generated stub.
class AllocatorService final : public grpc::Service {
 public:
  // ReleaseMany streams served at once, and for one uid: each holds a
  // server thread until its last part comes, so that they can never take
  // every thread, nor one user all of them. Beyond: RESOURCE_EXHAUSTED.
  // A client that sends its parts slowly, or stops, has its stream ended
  // (DEADLINE_EXCEEDED, nothing released) once it is
  // StreamTimeLimits::release_many old, so that its place comes free.
  static constexpr int kMaxReleaseStreams = 4;
  static constexpr int kMaxReleaseStreamsPerUid = 2;
  // ReleaseMany streams being served now.
  int release_streams() const { return release_streams_.taken(); }

  // What Stats answers (all uids, or only one's rows); by default the
  // core's alone.
  using StatsSource = std::function<v1::StatsResponse(std::optional<uid_t> only_uid)>;

  // With `peers` (hallocd's: every connection its listener handed gRPC),
  // a session's token is good only on a connection of the session's uid.
  // `stats` (hallocd's adds its transport's counters to the core's) may be
  // null.
  // With `calls` (hallocd's), a call its uid's limit did not admit is
  // refused (RESOURCE_EXHAUSTED) before anything else. `times`: how long
  // a ReleaseMany may last (its release_many).
  explicit AllocatorService(Allocator* core, std::shared_ptr<const ControlPeers> peers = nullptr,
                            StatsSource stats = nullptr, const CallsPerUid* calls = nullptr,
                            const StreamTimeLimits& times = {})
      : core_(core),
        peers_(std::move(peers)),
        stats_(std::move(stats)),
        calls_(calls),
        release_many_within_(times.release_many),
        cool_down_(times.overstay_cool_down),
        release_streams_("ReleaseMany streams", kMaxReleaseStreams, kMaxReleaseStreamsPerUid,
                         {times.release_many, 6 * times.release_many}) {
    AddMethods();
  }

  grpc::Status Allocate(grpc::ServerContext* ctx, const v1::AllocateRequest* req,
                        v1::AllocateResponse* resp);
  grpc::Status Release(grpc::ServerContext* ctx, const v1::ReleaseRequest* req,
                       v1::ReleaseResponse* resp);
  grpc::Status ReleaseMany(grpc::ServerContext* ctx, grpc::ServerReader<v1::ReleaseRequest>* reader,
                           v1::ReleaseResponse* resp);
  grpc::Status Describe(grpc::ServerContext* ctx, const v1::DescribeRequest* req,
                        v1::DescribeResponse* resp);
  grpc::Status List(grpc::ServerContext* ctx, const v1::ListRequest* req, v1::ListResponse* resp);
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                     v1::StatsResponse* resp);
  grpc::Status IsSupported(grpc::ServerContext* ctx, const v1::IsSupportedRequest* req,
                           v1::IsSupportedResponse* resp);
  grpc::Status Share(grpc::ServerContext* ctx, const v1::ShareRequest* req,
                     v1::ShareResponse* resp);
  grpc::Status Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                      v1::ImportResponse* resp);
  grpc::Status Dump(grpc::ServerContext* ctx, const v1::DumpRequest* req, v1::DumpResponse* resp);
  grpc::Status SetMetadata(grpc::ServerContext* ctx, const v1::SetMetadataRequest* req,
                           v1::SetMetadataResponse* resp);
  grpc::Status Revoke(grpc::ServerContext* ctx, const v1::RevokeRequest* req,
                      v1::RevokeResponse* resp);

 private:
  // Registers every method of the service (its names as the generated
  // service has them).
  void AddMethods();
  // A call's session (found by its token, on a connection of the session's
  // uid), and the peer of the control connection it came on (nullopt
  // without ControlPeers: an in-process server).
  struct Caller {
    std::shared_ptr<Session> session;
    std::optional<ucred> peer;
    std::optional<uint64_t> peer_start;  // ControlPeers::Connection::start
  };
  absl::StatusOr<Caller> CallerOf(grpc::ServerContext* ctx);
  // Who the policy judges for a call (`kept`: the identity is stored, as a
  // grant's sharer): the session's identity, its verified executable
  // included, only when the control connection was made by the session's
  // own process (the same pid and start: not a process that had its pid
  // before), still running that executable (RequestIdentity, as the
  // broker judges each request); otherwise the connection's uid and gid.
  // (gRPC cannot tell which process sends a call, only which connected:
  // a fork of the session's process using an inherited channel is judged
  // as the session while the session's process runs.) Without ControlPeers:
  // the session's identity.
  Identity Who(const Caller& caller, bool kept = false) const;
  // Finish() for a call refused before its session was known: its audit
  // line is limited under its connection's uid (ControlPeers), not one
  // budget shared by every such caller, which one user's flood took.
  // Finish() for a call with a session: a failure's audit line names who
  // was judged (Who).
  grpc::Status FinishFor(const char* method, const Caller& caller,
                         const absl::Status& status) const;
  grpc::Status FinishUnauthenticated(const char* method, grpc::ServerContext* ctx,
                                     const absl::Status& status);

  Allocator* const core_;
  const std::shared_ptr<const ControlPeers> peers_;
  const StatsSource stats_;
  const CallsPerUid* const calls_;
  const absl::Duration release_many_within_;
  const absl::Duration cool_down_;  // StreamTimeLimits::overstay_cool_down
  // One uid's streams may hold places for release_many_within_ in all
  // within six times that (StreamSlots::PlaceBudget).
  StreamSlots release_streams_;
  // Ends ReleaseMany streams past release_many_within_ (their handlers
  // wait in Read(), which only a cancel from another thread ends).
  StreamDeadlines release_deadlines_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_GRPC_SERVICE_H_
