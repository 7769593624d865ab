// The broker's request path: records off a connection, the fast-path
// Allocate, Import, Share, Revoke, Release, Describe, SetMetadata and
// IsSupported, and their answers (the handshake and connection life are in
// broker.cc), and connections paused while fds they sent wait to be closed
// or a request waits for its lane.
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/scm.h"
#include "service/audit.h"
#include "service/broker.h"
#include "service/peer_identity.h"
#include "service/registry.h"
#include "service/util/clock.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

// What `req` allocates, as the core plans it (an image's layout: strides,
// plane and row alignment); 0 for a request the plan refuses, whose
// refusal is then answered at once and in order, not from a lane on the
// strength of a size it may not have. A small blob is not planned here
// (the common call pays nothing), each of its buffers counted as the
// whole pages it takes (a 1-byte blob is a page, and a memfd made).
uint64_t BytesOf(const v1::AllocateRequest& req, const Allocator& core) {
  if (!req.desc().has_image()) {
    const uint64_t count = std::max<uint32_t>(req.count(), 1);
    const uint64_t size = req.desc().size();
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    if (size < Broker::kBudgetedBytes / count) return (size + page - 1) / page * page * count;
  }
  return core.PlannedBytes(req);
}

constexpr absl::string_view kMalformedRequest =
    "malformed broker request (a serialized halloc.v1.BrokerRequest, no fds)";

// The broker path's channel: an Allocate's or an Import's reply and its
// fds in one record.
class ReplyChannel : public FdChannel {
 public:
  ReplyChannel(SocketFdChannel& conn, uint64_t request_id)
      : conn_(conn), request_id_(request_id) {}
  absl::Status Send(const v1::BufferFds&, absl::Span<const int> fds,
                    const v1::AllocateResponse* reply) override {
    return SendLent(reply, &v1::BrokerReply::unsafe_arena_set_allocated_allocate,
                    &v1::BrokerReply::unsafe_arena_release_allocate, fds);
  }
  absl::Status SendImport(const v1::BufferFds&, int fd, const v1::ImportResponse& reply) override {
    return SendLent(&reply, &v1::BrokerReply::unsafe_arena_set_allocated_import_buffer,
                    &v1::BrokerReply::unsafe_arena_release_import_buffer,
                    absl::MakeConstSpan(&fd, 1));
  }

 private:
  // One record: a BrokerReply carrying `reply` (if any) through `lend` and
  // `take_back`, and `fds`. The reply is lent to the frame for serializing,
  // not copied (a copy and its destruction were ~1 µs of a ~30 µs fast-path
  // Allocate), and taken back before the frame is destroyed. Serializing
  // does not write to it, hence the const_cast.
  template <typename Msg>
  absl::Status SendLent(const Msg* reply, void (v1::BrokerReply::*lend)(Msg*),
                        Msg* (v1::BrokerReply::*take_back)(), absl::Span<const int> fds) {
    v1::BrokerFrame frame;
    v1::BrokerReply* r = frame.mutable_reply();
    r->set_request_id(request_id_);
    if (reply != nullptr) (r->*lend)(const_cast<Msg*>(reply));
    const std::string bytes = frame.SerializeAsString();
    if (reply != nullptr) (void)(r->*take_back)();
    // Counted like every fd the connection carries (UnreadFds).
    return conn_.SendCounted(bytes, fds);
  }

  SocketFdChannel& conn_;
  const uint64_t request_id_;
};

}  // namespace

v1::BrokerReply Broker::ErrorReply(uint64_t request_id, const absl::Status& status) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  r.set_code(static_cast<int>(status.code()));
  if (status.ok()) return r;  // (every Release's, Revoke's, ...: no message)
  std::string message = Utf8OrEscaped(status.message());
  if (message.size() > kMaxReplyMessageBytes) {
    // Cut on a character's first byte, and say so.
    size_t end = kMaxReplyMessageBytes - 3;
    while (end > 0 && (static_cast<unsigned char>(message[end]) & 0xC0) == 0x80) --end;
    message.resize(end);
    message += "...";
  }
  r.set_message(std::move(message));
  return r;
}

std::string Broker::ReplyRecord(v1::BrokerReply reply) {
  v1::BrokerFrame frame;
  const uint64_t request_id = reply.request_id();
  *frame.mutable_reply() = std::move(reply);
  std::string bytes = frame.SerializeAsString();
  if (bytes.size() <= kMaxRecordBytes) return bytes;
  // (A Describe of a buffer thousands of sessions hold, by the owner.)
  *frame.mutable_reply() = ErrorReply(
      request_id, absl::ResourceExhaustedError(absl::StrCat(
                      "the reply (", bytes.size(), " bytes) does not fit in one broker record (",
                      kMaxRecordBytes, " bytes); ask over gRPC")));
  return frame.SerializeAsString();
}

// One record per readable event. epoll (level-triggered) reports the
// connection again while more are queued, so a busy connection takes turns
// with the others, and a reply is not followed by a failed recvmsg before
// the thread sleeps (on a CPU shared with the client, that recvmsg would
// stand between the reply and the client reading it).
void Broker::OnReadable(uint64_t key) {
  auto it = conns_.find(key);
  if (it == conns_.end()) return;  // an earlier event closed it
  Conn& conn = *it->second;
  // Paused by an earlier event of this batch (its uid went over its share
  // of waiting foreign fds): Pause() takes it out of the epoll set, but not
  // out of the events already returned.
  if (conn.paused) return;
  // With room for every fd a record may carry: none is dropped (and so
  // released) on this thread; any that came go to foreign_fds_.
  absl::StatusOr<RawRecord> raw = ReceiveRawRecord(conn.sock(), true);
  if (!raw.ok()) {
    // Nothing queued after all: next event.
    if (absl::IsResourceExhausted(raw.status())) return;
    Close(key);  // peer closed, or an error on its socket
    return;
  }
  const bool malformed = raw->fds_cut || !raw->record.fds.empty();
  if (!raw->record.fds.empty()) TakeForeignFds(conn, std::move(raw->record.fds));
  if (malformed) {  // it carried fds
    Reply(conn, ErrorReply(0, absl::InvalidArgumentError(kMalformedRequest)));
    return;
  }
  if (raw->bytes_cut) {
    // As gRPC answers a request past --grpc_max_message_bytes: refused
    // unread (its request id with it, so 0).
    Reply(conn, ErrorReply(0, absl::ResourceExhaustedError(absl::StrCat(
                                  "broker request longer than ", kMaxRecordBytes,
                                  " bytes (what hallocd reads of one on either path); refused "
                                  "unread"))));
    return;
  }
  Handle(conn, std::move(raw->record));
}

absl::Status Broker::SendReply(SocketFdChannel& channel, v1::BrokerReply reply) {
  return channel.SendCounted(ReplyRecord(std::move(reply)), {});
}

void Broker::Reply(Conn& conn, v1::BrokerReply reply) {
  if (absl::Status s = SendReply(*conn.channel, std::move(reply)); !s.ok()) {
    Warn("reply", conn.charged_uid,
         absl::StrCat("cannot reply to pid ", conn.peer.pid, ": ", s.message()));
  }
}

bool Broker::Handle(Conn& conn, Record rec) {
  v1::BrokerRequest req;
  const bool timed = rec.bytes.size() > kTimedParseBytes;  // never a real request's
  const absl::Time start = timed ? MonotonicNow() : absl::Time();
  bool parsed;
  {
    const ScopedParseUid whose(conn.charged_uid);  // libprotobuf's complaints
    parsed = req.ParseFromString(rec.bytes);
  }
  if (timed) {
    const absl::Time now = MonotonicNow();
    parse_budget_.Charge(conn.charged_uid, now - start, start);
    if (parse_budget_.Over(conn.charged_uid, now)) {
      PauseForParsing(conn.charged_uid, parse_budget_.WindowEnd(conn.charged_uid));
    }
  }
  if (!parsed) {
    Reply(conn, ErrorReply(0, absl::InvalidArgumentError(kMalformedRequest)));
    return true;
  }
  if (!rec.creds) {
    Reply(conn, ErrorReply(req.request_id(), absl::UnauthenticatedError(
                                                 "record carries no credentials")));
    return true;
  }
  if (req.has_verify()) return Verify(conn, *rec.creds, req);
  if (!conn.session) {
    Reply(conn, ErrorReply(req.request_id(), absl::UnauthenticatedError(
                                                 "verify the session first (answer the Hello)")));
    return true;
  }
  Session& session = *conn.session;
  // Reply from the client's CPU (see CpuFollower) once it is a lone
  // client: its request, and only its, in this turn and the one before.
  // Clients taking turns, even one at a time, do not move the thread.
  if (follower_) {
    const bool alone = clients_this_turn_ == 1;
    if (!alone) {
      lone_requests_ = 0;
    } else {
      lone_requests_ = conn.key == last_client_ ? lone_requests_ + 1 : 1;
    }
    last_client_ = alone ? conn.key : 0;
    follower_->Follow(req.cpu(), lone_requests_ >= 2);
    Publish();
  }
  // Who asks (Release needs no one: it acts on the session's own buffers):
  // the verified process itself, or another process holding the socket,
  // judged by uid and gid alone (RequestIdentity).
  // `kept`: the identity is stored (a grant's sharer, judged again at each
  // Import, maybe under a policy reloaded with rules that match executables).
  const auto stamped = [&](bool kept = false) {
    Identity id = RequestIdentity(session.creds(), *rec.creds, conn.pidfd.get(),
                                  kept || core_->policy()->matches_exe());
    // Another uid on the socket: one of hallocd's uid's own containers'
    // as the connector may not be.
    if (id.uid != session.creds().uid && !id.maps_hallocd_uid) {
      id.maps_hallocd_uid =
          HallocdsSubordinate(connect_rate_.subordinate_uids(MonotonicNow()), id.uid);
    }
    return id;
  };
  switch (req.kind_case()) {
    case v1::BrokerRequest::kAllocate: {
      const Identity caller = stamped();
      // Small ones here, unless they could only be made after pages are
      // freed (released memory still charged: see Registry::CheckRoom), or
      // could cost this thread more than a plain request does and their
      // uid has had its share of it lately (kBudgetedBytes). Every one
      // made here is timed into that share, whatever its size.
      const uint64_t bytes = BytesOf(req.allocate(), *core_);
      const bool budgeted = bytes >= kBudgetedBytes || (bytes > 0 && req.allocate().count() > 1);
      const absl::Time start = MonotonicNow();
      const bool over_budget = budgeted && inline_budget_.Over(conn.charged_uid, start);
      if (bytes < kSlowLaneBytes && !over_budget) {
        const bool served =
            ServeAllocate(session, caller, req, *conn.channel, /*may_wait=*/false);
        inline_budget_.Charge(conn.charged_uid, MonotonicNow() - start, start);
        if (served) return true;
      }
      // Large, or waiting, or past its share: made on the slow lane's
      // thread, so that committing or freeing memory does not keep this
      // thread from everyone else's requests. Its answer may come after
      // those of later requests (replies carry request ids).
      ToLane(conn, caller, std::move(req));
      return true;
    }
    case v1::BrokerRequest::kImportBuffer: {
      const Identity caller = stamped();
      ServeImport(session, caller, req, *conn.channel);
      return true;
    }
    case v1::BrokerRequest::kShare: {
      const Identity caller = stamped(/*kept=*/true);  // the grant's sharer
      absl::StatusOr<v1::Grant> g = core_->Share(session, caller, req.share());
      if (!g.ok()) {
        Refuse("Share", session, caller, req.request_id(), g.status(), *conn.channel);
        return true;
      }
      const uint64_t grant_id = g->id();
      v1::BrokerReply reply = ErrorReply(req.request_id(), absl::OkStatus());
      *reply.mutable_share()->mutable_grant() = *std::move(g);
      if (absl::Status s = SendReply(*conn.channel, std::move(reply)); !s.ok()) {
        // Nobody learned its token: withdrawn, as gRPC withdraws a grant
        // its caller cannot learn (kept, it would count against the
        // session's grants until the session ends). New, it has no imports.
        (void)core_->Revoke(session, grant_id);
        Warn("reply", conn.charged_uid,
             absl::StrCat("cannot reply to pid ", conn.peer.pid, ": ", s.message(),
                          "; the grant it asked for was withdrawn"));
      }
      return true;
    }
    case v1::BrokerRequest::kRevoke: {
      // On a backend that revokes live, one ioctl per view the grant's
      // imports made (Registry::kMaxImportsPerGrant per importing session),
      // each zapping as many mappings as the view's holders made: on the
      // revoke lane (revoke_lane_ in broker.h). Elsewhere it only forgets
      // the grant: here.
      const Identity caller = stamped();
      if (core_->backend().CanRevokeLive()) {
        ToLane(conn, caller, std::move(req));
      } else {
        ServeRevoke(session, caller, req, *conn.channel);
      }
      return true;
    }
    case v1::BrokerRequest::kDescribe: {
      // The session's own view of a buffer it holds, like Release: whoever
      // holds its socket may ask.
      absl::StatusOr<v1::BufferInfo> info = core_->Describe(session, req.describe().buffer_id());
      v1::BrokerReply reply = ErrorReply(req.request_id(), info.status());
      if (info.ok()) *reply.mutable_describe()->mutable_buffer() = *std::move(info);
      Reply(conn, std::move(reply));
      return true;
    }
    case v1::BrokerRequest::kSetMetadata: {
      const Identity caller = stamped();
      absl::StatusOr<v1::BufferInfo> info = core_->SetMetadata(session, caller, req.set_metadata());
      if (!info.ok()) {
        Refuse("SetMetadata", session, caller, req.request_id(), info.status(), *conn.channel);
        return true;
      }
      v1::BrokerReply reply = ErrorReply(req.request_id(), absl::OkStatus());
      *reply.mutable_set_metadata()->mutable_buffer() = *std::move(info);
      Reply(conn, std::move(reply));
      return true;
    }
    case v1::BrokerRequest::kIsSupported: {
      // Judged for whoever sent it, as its Allocate would be.
      const Identity caller = stamped();
      v1::BrokerReply reply = ErrorReply(req.request_id(), absl::OkStatus());
      *reply.mutable_is_supported() =
          core_->IsSupported(req.is_supported(), &caller, &session.creds());
      Reply(conn, std::move(reply));
      return true;
    }
    case v1::BrokerRequest::kRelease: {
      absl::Status s = core_->Release(session, req.release());
      v1::BrokerReply reply = ErrorReply(req.request_id(), s);
      if (s.ok()) reply.mutable_release();
      Reply(conn, std::move(reply));
      return true;
    }
    default:
      Reply(conn, ErrorReply(req.request_id(),
                             absl::InvalidArgumentError("unknown broker request kind")));
      return true;
  }
}

void Broker::ToLane(Conn& conn, const Identity& caller, v1::BrokerRequest req) {
  // Kept past this record from here on (held or queued): without the
  // unknown fields protobuf kept, each 2-byte one an object of its own
  // (a 64 KiB record of them parses to ~2 MB; one may wait on each of
  // a uid's connections).
  req.DiscardUnknownFields();
  // Its lane's room (the uid's places, or everyone's) is taken: it waits
  // for room, its connection unread meanwhile, rather than fail a burst
  // that is merely being slowed (on the gRPC path the same call would wait
  // on its own thread).
  if (!LaneOf(req).HasRoom(conn.charged_uid)) {
    conn.held = Conn::Held{std::move(req), caller};
    Pause(conn);
    return;
  }
  Post(conn, caller, std::move(req));
}

void Broker::Post(Conn& conn, const Identity& caller, v1::BrokerRequest req) {
  const uint64_t id = req.request_id();
  const bool revoke = req.has_revoke();
  WorkQueue& lane = LaneOf(req);
  // A Revoke keeps its connection unread until it is made (Conn::revoking).
  if (revoke) ++*conn.revoking;
  absl::Status posted =
      lane.Post(conn.charged_uid, [this, s = conn.session, ch = conn.channel, who = caller,
                                   req = std::move(req), revoking = conn.revoking, revoke] {
        if (revoke) {
          ServeRevoke(*s, who, req, *ch);
          --*revoking;  // before the lane says it is done (LaneDone)
        } else {
          ServeAllocate(*s, who, req, *ch);
        }
      });
  if (!posted.ok()) {
    if (revoke) --*conn.revoking;
    Reply(conn, ErrorReply(id, posted));
    return;
  }
  if (revoke) Pause(conn);
}

void Broker::ServeRevoke(Session& session, const Identity& caller, const v1::BrokerRequest& req,
                         SocketFdChannel& conn) {
  absl::Status s = core_->Revoke(session, caller, req.revoke().grant_id());
  if (!s.ok()) {
    Refuse("Revoke", session, caller, req.request_id(), s, conn);
    return;
  }
  v1::BrokerReply reply = ErrorReply(req.request_id(), absl::OkStatus());
  reply.mutable_revoke();
  ReplyTo(session, conn, std::move(reply));
}

bool Broker::ServeAllocate(Session& session, const Identity& caller,
                           const v1::BrokerRequest& req, SocketFdChannel& conn,
                           bool may_wait) {
  ReplyChannel channel(conn, req.request_id());
  absl::StatusOr<v1::AllocateResponse> r =
      core_->Allocate(session, caller, req.allocate(), channel, may_wait);
  if (r.ok()) return true;
  if (!may_wait && r.status().GetPayload(Registry::kWaitForReleasedMemory)) return false;
  Refuse("Allocate", session, caller, req.request_id(), r.status(), conn);
  return true;
}

void Broker::Refuse(const char* method, Session& session, const Identity& caller,
                    uint64_t request_id, const absl::Status& status, SocketFdChannel& conn) {
  AuditFailure("broker", method, &session, &caller, status);
  ReplyTo(session, conn, ErrorReply(request_id, status));
}

void Broker::ReplyTo(Session& session, SocketFdChannel& conn, v1::BrokerReply reply) {
  if (absl::Status s = SendReply(conn, std::move(reply)); !s.ok()) {
    Warn("reply", session.creds().charged_uid(),
         absl::StrCat("cannot reply to session ", session.id(), ": ", s.message()));
  }
}

void Broker::ServeImport(Session& session, const Identity& caller, const v1::BrokerRequest& req,
                         SocketFdChannel& conn) {
  ReplyChannel channel(conn, req.request_id());
  absl::StatusOr<v1::ImportResponse> r =
      core_->Import(session, caller, req.import_buffer().grant_token(), 0, channel);
  if (!r.ok()) Refuse("Import", session, caller, req.request_id(), r.status(), conn);
}

void Broker::TakeForeignFds(Conn& conn, std::vector<UniqueFd> fds) {
  const uid_t uid = conn.charged_uid;
  foreign_fds_->Close(conn.key, uid, std::move(fds));
  Pause(conn);
  if (foreign_fds_->OverLimit(uid)) {
    Warn("foreign", uid,
         absl::StrCat("uid ", uid, " has ", foreign_fds_->waiting_of(uid),
                      " fds it sent waiting to be closed: not reading any "
                      "of its connections until they are"));
    PauseUid(uid);
  }
}

void Broker::Pause(Conn& conn) {
  if (conn.paused) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, conn.sock(), nullptr);
  conn.paused = true;
  paused_.insert(conn.key);
}

void Broker::PauseForParsing(uid_t uid, absl::Time until) {
  if (!parse_paused_.emplace(uid, until).second) return;
  PauseUid(uid);
  Warn("parse", uid,
       absl::StrCat("uid ", uid,
                    " took its share of the broker thread parsing long records: not reading its "
                    "connections for ",
                    absl::FormatDuration(until - MonotonicNow())));
}

int Broker::ResumeParsed(absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  bool ended = false;
  for (auto it = parse_paused_.begin(); it != parse_paused_.end();) {
    if (it->second <= now) {
      parse_paused_.erase(it++);
      ended = true;
    } else {
      next = std::min(next, it->second);
      ++it;
    }
  }
  if (ended) ResumeCleared();
  if (next == absl::InfiniteFuture()) return -1;
  return static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))));
}

void Broker::PauseUid(uid_t uid) {
  for (auto& [key, c] : conns_) {
    if (c->charged_uid == uid) Pause(*c);
  }
}

void Broker::RetryHeld() {
  for (uint64_t key : paused_) {  // a held request's connection is paused
    auto c = conns_.find(key);
    if (c == conns_.end() || !c->second->held) continue;
    Conn& conn = *c->second;
    if (!LaneOf(conn.held->req).HasRoom(conn.charged_uid)) continue;
    Conn::Held h = *std::move(conn.held);
    conn.held.reset();
    Post(conn, h.caller, std::move(h.req));
  }
  // Those whose held request went, or whose Revoke was made, unless
  // something else keeps them paused.
  ResumeCleared();
}

void Broker::ResumeCleared() {
  for (auto it = paused_.begin(); it != paused_.end();) {
    auto c = conns_.find(*it);
    if (c == conns_.end()) {
      paused_.erase(it++);
      continue;
    }
    Conn& conn = *c->second;
    if (conn.held || *conn.revoking > 0 || foreign_fds_->Waiting(conn.key) ||
        foreign_fds_->OverLimit(conn.charged_uid) || ParsePaused(conn.charged_uid)) {
      ++it;
      continue;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = conn.key;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, conn.sock(), &ev) != 0) {
      Warn("resume", absl::StrCat("epoll_ctl(ADD): ", std::strerror(errno)));
      ++it;
      continue;
    }
    conn.paused = false;
    paused_.erase(it++);
  }
}

}  // namespace halloc
