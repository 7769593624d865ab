#include "service/grpc_service.h"

#include <glog/logging.h>
#include <grpc/support/time.h>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "service/audit.h"
#include "service/connection_limits.h"
#include "service/grpc_methods.h"
#include "service/peer_identity.h"
#include "service/util/clock.h"

namespace halloc {
namespace {

// Logs a failed call once, with who asked and what was decided.
grpc::Status Finish(const char* method, const Session* session,
                    const absl::Status& status) {
  if (!status.ok()) AuditFailure("grpc", method, session, nullptr, status);
  return ToGrpc(status);
}

// A call on a connection ControlPeers does not know (hallocd hands gRPC
// only connections it accepted, so: never, short of a bug).
absl::Status UnknownConnection() {
  return absl::UnauthenticatedError("this call's connection is not one hallocd accepted");
}

// Whether the caller has given up: its deadline passed, so it will never
// see this call's answer. The deadline, not IsCancelled(): on the sync
// server that polls the completion queue, an eighth of this daemon's CPU
// per Allocate in a profile.
bool PastDeadline(const grpc::ServerContext* ctx) {
  // Not deadline(): its system_clock time point wraps past the year 2262
  // (nanoseconds in 64 bits), and a client's deadline 300 years away read
  // as passed (a review helper's: its Allocate came back CANCELLED).
  const gpr_timespec deadline = ctx->raw_deadline();
  return gpr_time_cmp(deadline, gpr_now(deadline.clock_type)) <= 0;
}

}  // namespace

void AllocatorService::AddMethods() {
  using grpc::internal::RpcMethod;
  using grpc::internal::RpcServiceMethod;
  const auto unary = [this](const char* name, auto method) {
    AddMethod(
        new RpcServiceMethod(name, RpcMethod::NORMAL_RPC, NewParsedUnaryHandler(this, method)));
  };
  unary("/halloc.v1.Allocator/Allocate", &AllocatorService::Allocate);
  unary("/halloc.v1.Allocator/Release", &AllocatorService::Release);
  AddMethod(new RpcServiceMethod(
      "/halloc.v1.Allocator/ReleaseMany", RpcMethod::CLIENT_STREAMING,
      new grpc::internal::ClientStreamingHandler<AllocatorService, v1::ReleaseRequest,
                                                 v1::ReleaseResponse>(
          [](AllocatorService* service, grpc::ServerContext* ctx,
             grpc::ServerReader<v1::ReleaseRequest>* reader,
             v1::ReleaseResponse* resp) { return service->ReleaseMany(ctx, reader, resp); },
          this)));
  unary("/halloc.v1.Allocator/Describe", &AllocatorService::Describe);
  unary("/halloc.v1.Allocator/List", &AllocatorService::List);
  unary("/halloc.v1.Allocator/Stats", &AllocatorService::Stats);
  unary("/halloc.v1.Allocator/IsSupported", &AllocatorService::IsSupported);
  unary("/halloc.v1.Allocator/Share", &AllocatorService::Share);
  unary("/halloc.v1.Allocator/Import", &AllocatorService::Import);
  unary("/halloc.v1.Allocator/SetMetadata", &AllocatorService::SetMetadata);
  unary("/halloc.v1.Allocator/Dump", &AllocatorService::Dump);
  unary("/halloc.v1.Allocator/Revoke", &AllocatorService::Revoke);
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

grpc::Status AllocatorService::FinishUnauthenticated(const char* method, grpc::ServerContext* ctx,
                                                     const absl::Status& status) {
  // The connection's peer as the kernel said when it connected (no exe:
  // none was verified), limited under the uid it is charged to.
  Identity peer;
  peer.uid = static_cast<uid_t>(-1);
  if (peers_ != nullptr) {
    const std::optional<ControlPeers::Connection> c = peers_->Of(ctx->peer());
    if (c) {
      peer.uid = c->cred.uid;
      peer.gid = c->cred.gid;
      peer.pid = c->cred.pid;
    }
    // As ControlPeers::LimitUid: one shared uid for an unknown connection.
    peer.account_uid = c ? c->charged : static_cast<uid_t>(-1);
  }
  if (!status.ok()) AuditFailure("grpc", method, nullptr, peers_ ? &peer : nullptr, status);
  return ToGrpc(status);
}

grpc::Status AllocatorService::FinishFor(const char* method, const Caller& caller,
                                         const absl::Status& status) const {
  if (!status.ok()) {
    // Logged as who was judged: another process with the token is not the
    // session's verified one.
    const Identity who = Who(caller);
    AuditFailure("grpc", method, caller.session.get(), &who, status);
  }
  return ToGrpc(status);
}

absl::StatusOr<AllocatorService::Caller> AllocatorService::CallerOf(grpc::ServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(kSessionMetadataKey);
  absl::string_view token;
  if (it != md.end()) token = absl::string_view(it->second.data(), it->second.size());
  absl::StatusOr<std::shared_ptr<Session>> session = core_->Authenticate(token);
  if (!session.ok()) return session.status();
  if (peers_ == nullptr) return Caller{*std::move(session), std::nullopt};
  // The token is a bearer secret; the connection's uid is the kernel's
  // word: a token that reached another uid (handed on, kept across a
  // setuid, sent to the wrong socket) does not make it the session.
  const std::optional<ControlPeers::Connection> peer = peers_->Of(ctx->peer());
  if (!peer) return UnknownConnection();
  const uid_t uid = (*session)->creds().uid;
  if (peer->cred.uid != uid) {
    return absl::PermissionDeniedError(absl::StrCat(
        "session ", (*session)->id(), " is uid ", uid, "'s; this call came on a connection of uid ",
        peer->cred.uid, " (a session token is good only from its own uid)"));
  }
  return Caller{*std::move(session), peer->cred, peer->start};
}

Identity AllocatorService::Who(const Caller& caller, bool kept) const {
  const Session& session = *caller.session;
  if (!caller.peer) return session.creds();
  // Made by another process than the session's, or by one that had its
  // pid before it (then exited: the pid came round to the session's
  // process, while a connection it made before lived on elsewhere).
  if (caller.peer->pid != session.creds().pid || !caller.peer_start ||
      caller.peer_start != session.process_start()) {
    return OtherProcess(session.creds(), *caller.peer);
  }
  // Judged as a broker request would be from the process that connected
  // (RequestIdentity): the session's identity, its executable included,
  // only from the session's own process; any other process of its uid
  // holding the token, by uid and gid alone.
  return RequestIdentity(session.creds(), *caller.peer, session.pidfd(),
                         kept || core_->policy()->matches_exe());
}

// Runs `body` for a call that needs a session: `session`, and `caller`
// (who asks: Who(*caller)).
#define HALLOC_WITH_SESSION(method, body)                                       \
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;              \
  absl::StatusOr<Caller> caller = CallerOf(ctx);                                \
  if (!caller.ok()) return FinishUnauthenticated(method, ctx, caller.status()); \
  Session& session = *caller->session;                                          \
  return FinishFor(method, *caller, [&]() -> absl::Status body())

grpc::Status AllocatorService::Allocate(grpc::ServerContext* ctx,
                                        const v1::AllocateRequest* req,
                                        v1::AllocateResponse* resp) {
  HALLOC_WITH_SESSION("Allocate", {
    absl::StatusOr<v1::AllocateResponse> r =
        core_->Allocate(session, Who(*caller), *req, session.fds());
    if (!r.ok()) return r.status();
    // A caller whose deadline passed while we allocated would never learn
    // the ids: give the buffers back now rather than hold them until its
    // session ends. (libhalloc closes the fds of a call that gave up as
    // they come, by AllocateRequest.call_id, and gives back what this
    // check missed.) A caller that cancels explicitly still holds what it
    // asked for: List shows it, Release or session end frees it.
    if (PastDeadline(ctx)) {
      core_->UndoAllocate(session, *r);
      return absl::CancelledError("the call was cancelled or its deadline passed; "
                                  "the buffers were released");
    }
    *resp = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::Release(grpc::ServerContext* ctx,
                                       const v1::ReleaseRequest* req,
                                       v1::ReleaseResponse*) {
  HALLOC_WITH_SESSION("Release", { return core_->Release(session, *req); });
}

grpc::Status AllocatorService::ReleaseMany(grpc::ServerContext* ctx,
                                           grpc::ServerReader<v1::ReleaseRequest>* reader,
                                           v1::ReleaseResponse*) {
  HALLOC_WITH_SESSION("ReleaseMany", {
    absl::StatusOr<StreamSlots::Slot> slot =
        release_streams_.Take(ControlPeers::LimitUid(peers_.get(), ctx->peer()));
    if (!slot.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          slot.status().message(), "; or release fewer ids (a Release of up to 64 KiB of ids)"));
    }
    // Its parts come within release_many_within_ of its start, or it is
    // cut (Read() returns false) and its client told so.
    const std::string too_slow = absl::StrCat(
        "a ReleaseMany's requests must all come within ",
        absl::FormatDuration(release_many_within_),
        " of its start (hallocd's limit: they hold one of its few places for such streams; "
        "write them at once): nothing released");
    StreamDeadlines::Deadline deadline = release_deadlines_.Watch(
        ctx, MonotonicNow() + release_many_within_, grpc::StatusCode::DEADLINE_EXCEEDED, too_slow);
    // Gathered (no further than a Release may name), then released as one.
    v1::ReleaseRequest all;
    v1::ReleaseRequest part;
    bool last = false;
    bool first = true;
    while (!last && reader->Read(&part)) {
      RETURN_IF_ERROR(core_->CheckReleaseIds(static_cast<uint64_t>(all.buffer_ids_size()) +
                                             part.buffer_ids_size()));
      if (first) {
        all.set_import_references(part.import_references());
        first = false;
      } else if (part.import_references() != all.import_references()) {
        return absl::InvalidArgumentError(
            "a ReleaseMany's requests all give back holds, or all import references");
      }
      if (!part.hold_generations().empty() &&
          part.hold_generations_size() != part.buffer_ids_size()) {
        return absl::InvalidArgumentError(
            "a ReleaseMany's request names one hold generation per id, or none");
      }
      // A part without generations names any hold (0) for each of its
      // ids, so that, gathered, every id keeps its own generation.
      const bool named = !part.hold_generations().empty();
      const bool any_named = named || !all.hold_generations().empty();
      if (any_named) all.mutable_hold_generations()->Resize(all.buffer_ids_size(), 0);
      all.mutable_buffer_ids()->MergeFrom(part.buffer_ids());
      if (named) all.mutable_hold_generations()->MergeFrom(part.hold_generations());
      if (any_named) all.mutable_hold_generations()->Resize(all.buffer_ids_size(), 0);
      last = part.last();
    }
    // Cut, even after its last part came: its client was told nothing
    // was released.
    if (!deadline.Stop()) {
      slot->Overstayed(cool_down_);
      return absl::DeadlineExceededError(too_slow);
    }
    // Its place goes now: the release below is hallocd's time, not the
    // client's (StreamSlots::PlaceBudget).
    { const StreamSlots::Slot done = *std::move(slot); }
    // Cut or cancelled before its end: which ids it meant is not known.
    if (!last) {
      return absl::CancelledError("the stream ended before its last request: nothing released");
    }
    return core_->Release(session, all);
  });
}

grpc::Status AllocatorService::Describe(grpc::ServerContext* ctx,
                                        const v1::DescribeRequest* req,
                                        v1::DescribeResponse* resp) {
  HALLOC_WITH_SESSION("Describe", {
    absl::StatusOr<v1::BufferInfo> r = core_->Describe(session, req->buffer_id());
    if (!r.ok()) return r.status();
    *resp->mutable_buffer() = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::List(grpc::ServerContext* ctx,
                                    const v1::ListRequest* req,
                                    v1::ListResponse* resp) {
  HALLOC_WITH_SESSION("List", {
    absl::StatusOr<v1::ListResponse> r = core_->List(session, *req);
    if (!r.ok()) return r.status();
    *resp = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                                     v1::StatsResponse* resp) {
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;
  std::optional<uid_t> only_uid;  // an in-process server (no peers): everything
  if (peers_ != nullptr) {
    const std::optional<ControlPeers::Connection> peer = peers_->Of(ctx->peer());
    if (!peer) return Finish("Stats", nullptr, UnknownConnection());
    if (!IsOperatorUid(peer->cred.uid)) only_uid = peer->charged;
  }
  *resp = stats_ ? stats_(only_uid) : core_->Stats(only_uid);
  return grpc::Status::OK;
}

grpc::Status AllocatorService::IsSupported(grpc::ServerContext* ctx,
                                           const v1::IsSupportedRequest* req,
                                           v1::IsSupportedResponse* resp) {
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;
  // The caller's policy applies when it has a session; a bad token is not
  // silently ignored.
  const bool has_token = ctx->client_metadata().count(kSessionMetadataKey) > 0;
  absl::StatusOr<Caller> caller = CallerOf(ctx);
  // (Refusals audited per uid of the connection, as for every method.)
  if (has_token && !caller.ok()) {
    return FinishUnauthenticated("IsSupported", ctx, caller.status());
  }
  if (!caller.ok()) {
    *resp = core_->IsSupported(*req, nullptr);
  } else {
    // As Allocate: the session whose token it is holds what it makes.
    const Identity who = Who(*caller);
    *resp = core_->IsSupported(*req, &who, &caller->session->creds());
  }
  return grpc::Status::OK;
}

grpc::Status AllocatorService::Dump(grpc::ServerContext* ctx, const v1::DumpRequest* req,
                                    v1::DumpResponse* resp) {
  HALLOC_WITH_SESSION("Dump", {
    absl::StatusOr<v1::DumpResponse> r = core_->Dump(session, *req);
    if (!r.ok()) return r.status();
    *resp = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::Share(grpc::ServerContext* ctx,
                                     const v1::ShareRequest* req,
                                     v1::ShareResponse* resp) {
  HALLOC_WITH_SESSION("Share", {
    absl::StatusOr<v1::Grant> r = core_->Share(session, Who(*caller, /*kept=*/true), *req);
    if (!r.ok()) return r.status();
    // A caller past its deadline never learns the grant: nobody could hand
    // it on or revoke it, and it would count against the buffer's grants
    // until the session ends. Withdrawn, as libhalloc withdraws a late
    // broker grant.
    if (PastDeadline(ctx)) {
      (void)core_->Revoke(session, Who(*caller), r->id());
      return absl::CancelledError(
          "the call was cancelled or its deadline passed; the grant was withdrawn");
    }
    *resp->mutable_grant() = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::Import(grpc::ServerContext* ctx,
                                      const v1::ImportRequest* req,
                                      v1::ImportResponse* resp) {
  HALLOC_WITH_SESSION("Import", {
    absl::StatusOr<v1::ImportResponse> r =
        core_->Import(session, Who(*caller), req->grant_token(), req->call_id(), session.fds(),
                      [&] { return PastDeadline(ctx); });
    if (!r.ok()) return r.status();
    *resp = *std::move(r);  // newly_held too: a client whose fd was cut gives that hold back
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::SetMetadata(grpc::ServerContext* ctx,
                                           const v1::SetMetadataRequest* req,
                                           v1::SetMetadataResponse* resp) {
  HALLOC_WITH_SESSION("SetMetadata", {
    absl::StatusOr<v1::BufferInfo> r = core_->SetMetadata(session, Who(*caller), *req);
    if (!r.ok()) return r.status();
    *resp->mutable_buffer() = std::move(*r);
    return absl::OkStatus();
  });
}

grpc::Status AllocatorService::Revoke(grpc::ServerContext* ctx,
                                      const v1::RevokeRequest* req,
                                      v1::RevokeResponse*) {
  HALLOC_WITH_SESSION("Revoke", { return core_->Revoke(session, Who(*caller), req->grant_id()); });
}

}  // namespace halloc
