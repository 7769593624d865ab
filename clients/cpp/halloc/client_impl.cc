#include "clients/cpp/halloc/client_impl.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/fork.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"

namespace halloc {
namespace {

// A wait of `ms` for poll(), whose timeout is an int: a longer call
// timeout (weeks) would wrap, and end the wait early.
int PollMs(int64_t ms) { return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX)); }

}  // namespace

absl::Status FromGrpc(const grpc::Status& s, absl::string_view method) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(method, ": ", s.error_message()));
}

Client::Impl::Impl(BrokerConnection conn, std::shared_ptr<grpc::Channel> channel,
                   const ConnectOptions& options)
    : broker_(std::move(conn.fd)),
      hello_(std::move(conn.hello)),
      welcome_(std::move(conn.welcome)),
      stub_(v1::Allocator::NewStub(channel)),
      timeout_(options.timeout),
      fast_path_(options.broker_fast_path),
      receive_timeout_(SetReceiveTimeout(broker_.get(), timeout_ / 2)),
      pid_(::getpid()),
      fork_generation_(ForkGeneration()) {}

Client::Impl::~Impl() {
  if (ForkGeneration() == fork_generation_) {
    // Python's Connection.close does the same.
    ::shutdown(broker_.get(), SHUT_RDWR);
  } else {
    // A shutdown here would end the parent's session: the socket is one.
    (void)stub_.release();
  }
}

std::unique_ptr<grpc::ClientContext> Client::Impl::Context(absl::Time by) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata(kSessionMetadataKey, welcome_.session_token());
  ctx->set_deadline(absl::ToChronoTime(std::min(absl::Now() + timeout_, by)));
  // Through a connect that fails for a while (a full backlog, hallocd
  // restarting), up to the deadline, rather than UNAVAILABLE at once; but
  // not once hallocd ended the session (it exited, or cut the connection):
  // then a call fails at once where nothing listens, and one that needs no
  // session (Stats) is answered by a hallocd started since.
  ctx->set_wait_for_ready(!SessionEnded());
  return ctx;
}

absl::Status Client::Impl::ReleaseMany(absl::Span<const uint64_t> ids) {
  RETURN_IF_ERROR(Usable("Release"));
  auto ctx = Context();
  v1::ReleaseResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::ReleaseRequest>> writer =
      stub_->ReleaseMany(ctx.get(), &resp);
  for (size_t i = 0; i < ids.size(); i += kReleaseIdsPerRequest) {
    const absl::Span<const uint64_t> part = ids.subspan(i, kReleaseIdsPerRequest);
    v1::ReleaseRequest req;
    req.mutable_buffer_ids()->Add(part.begin(), part.end());
    req.set_last(i + part.size() == ids.size());
    if (!writer->Write(req)) break;  // hallocd ended the call: Finish says why
  }
  writer->WritesDone();
  return FromGrpc(writer->Finish(), "Release");
}

namespace {

// Whether `reply`, a success, is of the kind that answers `req`: its
// `kind` of the same name (hallocd's always is; what poses as hallocd may
// not be: its Describe's empty reply read as buffer 0, of size 0).
bool Answers(const v1::BrokerRequest& req, const v1::BrokerReply& reply) {
  const auto kind_of = [](const google::protobuf::Message& m) {
    const google::protobuf::FieldDescriptor* f =
        m.GetReflection()->GetOneofFieldDescriptor(m, m.GetDescriptor()->FindOneofByName("kind"));
    return f == nullptr ? std::string() : f->name();
  };
  const std::string asked = kind_of(req);
  return !asked.empty() && asked == kind_of(reply);
}

}  // namespace

absl::StatusOr<Client::Impl::Reply> Client::Impl::BrokerCall(v1::BrokerRequest req,
                                                             absl::string_view rpc) {
  RETURN_IF_ERROR(Usable(rpc));
  const absl::Time deadline = absl::Now() + timeout_;
  const uint64_t id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
  req.set_request_id(id);
  // Where to send the reply from (a hint; see BrokerRequest.cpu).
  req.set_cpu(CurrentCpuHint());
  const std::string bytes = req.SerializeAsString();
  // What hallocd reads of one request is the same on both paths
  // (kMaxRequestBytes); gRPC refuses a longer one RESOURCE_EXHAUSTED, and
  // so does this path rather than SendRecord's INVALID_ARGUMENT.
  if (bytes.size() > kMaxRequestBytes) {
    return Prefixed(absl::ResourceExhaustedError(
                        absl::StrCat("the request (", bytes.size(), " bytes) is over the ",
                                     kMaxRequestBytes, " hallocd reads of one")),
                    rpc);
  }
  {
    // Before the request goes: its reply may be filed by another reader
    // at once (one nobody waits for is dropped).
    absl::MutexLock lock(&mu_);
    waiting_.insert(id);
  }
  if (absl::Status s = Send(bytes, deadline); !s.ok()) {
    absl::MutexLock lock(&mu_);
    waiting_.erase(id);
    return Prefixed(s, rpc);
  }
  absl::MutexLock lock(&mu_);
  absl::Status waited =
      WaitFor([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return replies_.contains(id); }, deadline);
  waiting_.erase(id);
  if (!waited.ok()) {
    // Whatever the daemon answers later is given back, not leaked.
    abandoned_.emplace(id, absl::Now());
    return Prefixed(waited, rpc);
  }
  auto it = replies_.find(id);
  absl::StatusOr<Reply> r = std::move(it->second);
  replies_.erase(it);
  if (!r.ok()) return Prefixed(r.status(), rpc);
  if (absl::Status s = ReplyStatus(r->reply); !s.ok()) return Prefixed(s, rpc);
  if (!Answers(req, r->reply)) {
    return absl::DataLossError(absl::StrCat(rpc, ": hallocd's reply is not one to ", rpc));
  }
  return r;
}

absl::StatusOr<UniqueFd> Client::Impl::TakeFd(uint64_t buffer_id, uint64_t call_id,
                                              absl::Time deadline) {
  const FdKey key{buffer_id, call_id};
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(WaitFor(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_.contains(key); }, deadline));
  auto it = pending_.find(key);
  absl::StatusOr<UniqueFd> fd = std::move(it->second.fd);
  pending_.erase(it);
  return fd;
}

absl::Status Client::Impl::Usable(absl::string_view rpc) const {
  if (ForkGeneration() == fork_generation_) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(rpc, ": this Client was connected by process ", pid_,
                   "; after fork() a child connects a Client of its own"));
}

bool Client::Impl::SessionEnded() const {
  pollfd p{broker_.get(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0;
}

void Client::Impl::AbandonCall(uint64_t call_id, GiveBackWith what) {
  absl::MutexLock lock(&mu_);
  std::vector<Reference> came;
  absl::erase_if(pending_, [&](const auto& p) {
    if (p.first.second != call_id) return false;
    came.push_back({p.first.first, p.second.hold_generation});
    return true;
  });
  if (came.empty()) {
    abandoned_calls_[call_id] = {what, absl::Now()};  // they come later
  } else {
    GiveBackWithFds(what, came);
  }
}

void Client::Impl::GiveBackWithFds(GiveBackWith what, const std::vector<Reference>& fds) {
  switch (what) {
    case GiveBackWith::kNothing:
      return;
    case GiveBackWith::kBuffers: {
      std::vector<uint64_t> ids;
      for (const Reference& f : fds) ids.push_back(f.buffer_id);
      GiveBack(ids);
      return;
    }
    case GiveBackWith::kReferences:
      GiveBackReferencesLocked(fds);
      return;
  }
}

absl::StatusOr<Buffer> Client::Impl::Receive(v1::BufferInfo info, uint64_t call_id,
                                             absl::Time deadline) {
  ASSIGN_OR_RETURN(UniqueFd fd, TakeFd(info.id(), call_id, deadline));
  return Buffer(std::move(info), std::move(fd));
}

absl::Status Client::Impl::ImportBegins(uint64_t call_id) {
  RETURN_IF_ERROR(Usable("Import"));
  absl::MutexLock lock(&mu_);
  if (call_id != 0) {
    imports_in_flight_.insert(call_id);
  } else {
    ++imports_without_call_id_;
  }
  return absl::OkStatus();
}

void Client::Impl::ImportEnds(uint64_t call_id) {
  absl::MutexLock lock(&mu_);
  if (call_id != 0) {
    imports_in_flight_.erase(call_id);
  } else {
    --imports_without_call_id_;
  }
}

void Client::Impl::GiveBackReference(uint64_t buffer_id, uint64_t hold_generation) {
  absl::MutexLock lock(&mu_);
  GiveBackReferencesLocked({{buffer_id, hold_generation}});
}

void Client::Impl::GiveBackReferencesLocked(const std::vector<Reference>& refs) {
  if (!welcome_.import_references() || refs.empty()) return;
  v1::BrokerRequest req;
  v1::ReleaseRequest& release = *req.mutable_release();
  release.set_import_references(true);
  for (const Reference& r : refs) {
    release.add_buffer_ids(r.buffer_id);
    // The hold each is on, where hallocd takes it: a reference whose hold
    // went (a Release meanwhile) is not one of a newer hold's.
    if (welcome_.hold_generations()) release.add_hold_generations(r.hold_generation);
  }
  SendUnanswered(std::move(req));
}

void Client::Impl::ForgetAbandoned() {
  // Calls whose fds never come (refused, or never carried out) would be
  // noted for good: the oldest beyond a bound are forgotten.
  while (abandoned_calls_.size() > kMostAbandonedCalls) {
    auto oldest = abandoned_calls_.begin();
    for (auto it = abandoned_calls_.begin(); it != abandoned_calls_.end(); ++it) {
      if (it->second.since < oldest->second.since) oldest = it;
    }
    abandoned_calls_.erase(oldest);
  }
}

void Client::Impl::GiveBack(const std::vector<uint64_t>& ids) {
  if (ids.empty()) return;
  v1::BrokerRequest req;
  for (uint64_t b : ids) req.mutable_release()->add_buffer_ids(b);
  SendUnanswered(std::move(req));
}

void Client::Impl::Withdraw(uint64_t grant_id) {
  v1::BrokerRequest req;
  req.mutable_revoke()->set_grant_id(grant_id);
  SendUnanswered(std::move(req));
}

void Client::Impl::SendUnanswered(v1::BrokerRequest req) {
  const uint64_t id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
  req.set_request_id(id);
  if (SendRecord(broker_.get(), req.SerializeAsString(), {}, true).ok()) {
    abandoned_.emplace(id, absl::Now());
  }
}

absl::Status Client::Impl::Send(const std::string& bytes, absl::Time deadline) {
  for (;;) {
    absl::Status s = SendRecord(broker_.get(), bytes, {}, /*nonblocking=*/true);
    if (!absl::IsResourceExhausted(s)) return s;
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    s = ms > 0 ? WaitWritable(broker_.get(), PollMs(ms)) : absl::DeadlineExceededError("");
    if (absl::IsDeadlineExceeded(s)) {
      return absl::DeadlineExceededError("hallocd takes no requests (its broker socket is full)");
    }
    RETURN_IF_ERROR(s);
  }
}

absl::Status Client::Impl::WaitFor(absl::FunctionRef<bool()> ready, absl::Time deadline) {
  bool drained = false;  // read all that was queued once past the deadline
  for (;;) {
    if (ready()) return absl::OkStatus();
    const bool late = absl::Now() >= deadline;
    if (late && (drained || reading_)) {
      return absl::DeadlineExceededError("no answer from hallocd in time");
    }
    if (reading_) {
      // (WithTimeout: the TSan shim in third_party/sanitizers knows it.)
      filed_.WaitWithTimeout(&mu_, deadline - absl::Now());
      continue;
    }
    reading_ = true;
    mu_.Unlock();
    // Once late, only what is queued already (an answer that came in time).
    absl::StatusOr<Record> next =
        late ? ReceiveRecord(broker_.get(), /*nonblocking=*/true) : ReceiveNext(deadline);
    mu_.Lock();
    reading_ = false;
    drained = late && absl::IsResourceExhausted(next.status());  // nothing queued
    absl::Status filed = FileNext(std::move(next));
    filed_.SignalAll();
    RETURN_IF_ERROR(filed);
  }
}

// One blocking recvmsg per reply while the socket's own receive timeout
// (SO_RCVTIMEO, half the call timeout) ends before `deadline`: no poll and
// no failed recvmsg first, the fewest syscalls between a request and its
// reply. Closer to the deadline, it polls for exactly what is left.
absl::StatusOr<Record> Client::Impl::ReceiveNext(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return absl::ResourceExhaustedError("nothing yet");
  const bool blocking = receive_timeout_ > absl::ZeroDuration() && left >= receive_timeout_;
  if (!blocking) {
    const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(left));
    if (absl::Status s = WaitReadable(broker_.get(), PollMs(ms)); !s.ok()) {
      return absl::IsDeadlineExceeded(s) ? absl::ResourceExhaustedError("nothing yet") : s;
    }
  }
  return ReceiveRecord(broker_.get(), !blocking);
}

absl::Status Client::Impl::FileNext(absl::StatusOr<Record> next) {
  // Nothing yet (the receive timeout passed, or nothing was queued): the
  // caller looks again and checks its deadline.
  if (absl::IsResourceExhausted(next.status())) return absl::OkStatus();
  if (absl::IsDataLoss(next.status())) {
    // The kernel cut the fds (this process is out of fds): say so to
    // whoever waits for them, and give the buffers back.
    absl::optional<absl::Cord> bytes = next.status().GetPayload(kTruncatedRecordPayload);
    v1::BrokerFrame frame;
    if (bytes && frame.ParseFromString(std::string(*bytes))) File(frame, {}, true);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(next.status());
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(next->bytes)) {
    return absl::DataLossError("malformed frame on the broker socket");
  }
  File(frame, std::move(next->fds), false);
  return absl::OkStatus();
}

void Client::Impl::File(v1::BrokerFrame& frame, std::vector<UniqueFd> fds, bool truncated) {
  // fds no call claimed (its deadline passed before they came, from a
  // daemon that does not echo call ids) are dropped after a while, looked
  // at with whatever comes next, not only with the next fds.
  const absl::Time now = absl::Now();
  absl::erase_if(pending_, [&](const auto& p) { return now - p.second.since > 2 * timeout_; });
  ForgetAbandoned();
  // Built only for a cut record: every reply would otherwise pay for an
  // error status and its message (~450 instructions of ~10,000).
  const auto lost = [](bool given_back = true) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the fds hallocd sent were cut on the way (this process is out of fds: "
                     "RLIMIT_NOFILE)",
                     given_back ? "; the buffers were given back" : ""));
  };
  if (frame.has_reply()) {
    v1::BrokerReply& reply = *frame.mutable_reply();
    // A reply no call waits for (nor gave up on), or a second one for a
    // call: dropped, its fds closed here. Its buffers are not given back:
    // a repeated reply names buffers the session holds and uses.
    if (!waiting_.contains(reply.request_id()) && !abandoned_.contains(reply.request_id())) {
      return;
    }
    if (replies_.contains(reply.request_id())) return;
    std::vector<uint64_t> ids;
    for (const v1::BufferInfo& b : reply.allocate().buffers()) ids.push_back(b.id());
    const bool abandoned = abandoned_.erase(reply.request_id()) > 0;
    const bool bad = abandoned || truncated || (reply.has_allocate() && ids.size() != fds.size()) ||
                     (reply.has_import_buffer() && fds.size() != 1);
    if (bad) {
      GiveBack(ids);
      // An import's fd, if any came, closes here when nobody takes it; the
      // reference the import is on the session's hold goes back (that
      // import's alone: the session may hold the buffer by others, or an
      // import in flight may rely on it). A refused import made none.
      if (reply.has_import_buffer()) {
        GiveBackReferencesLocked(
            {{reply.import_buffer().buffer().id(), reply.import_buffer().hold_generation()}});
      }
      // A grant its caller never learned of (it gave up): nobody has its
      // token, and it would count against the session's grants, and keep
      // the buffer importable, until the session's end.
      if (abandoned && reply.has_share()) Withdraw(reply.share().grant().id());
      if (!abandoned) {
        replies_[reply.request_id()] =
            truncated ? lost(!reply.has_import_buffer() || welcome_.import_references())
                      : absl::DataLossError("reply carries the wrong number of fds");
      }
      return;
    }
    const uint64_t id = reply.request_id();  // before the move below
    replies_[id] = Reply{std::move(reply), std::move(fds)};
    return;
  }
  std::vector<v1::BufferFd> described;
  if (frame.has_buffer()) described.push_back(frame.buffer());
  for (const v1::BufferFd& b : frame.buffers().buffers()) described.push_back(b);
  // A call's fds come in one record; those of a call that gave up
  // close here (nobody takes them).
  const uint64_t call = described.empty() ? 0 : described.front().call_id();
  auto abandoned = call == 0 ? abandoned_calls_.end() : abandoned_calls_.find(call);
  if (abandoned != abandoned_calls_.end()) {
    std::vector<Reference> came;
    for (const v1::BufferFd& b : described) came.push_back({b.buffer_id(), b.hold_generation()});
    GiveBackWithFds(abandoned->second.what, came);
    abandoned_calls_.erase(abandoned);
    return;
  }
  if (truncated || described.size() != fds.size()) {
    // An Allocate's buffers go back now (its caller gives them back too).
    // An Import's do not: the session may hold that buffer by other
    // references, and its caller gives back the import's own
    // (GiveBackReference). Where hallocd echoes no call ids, any gRPC
    // Import in flight may be the one.
    const bool import =
        call != 0 ? imports_in_flight_.contains(call) : imports_without_call_id_ > 0;
    std::vector<uint64_t> ids;
    for (const v1::BufferFd& b : described) {
      ids.push_back(b.buffer_id());
      pending_[FdKey{b.buffer_id(), b.call_id()}] = {
          truncated ? lost(!import) : absl::DataLossError("malformed frame on the broker socket"),
          absl::Now(), b.hold_generation()};
    }
    if (!import) GiveBack(ids);
    return;
  }
  for (size_t i = 0; i < described.size(); ++i) {
    const FdKey key{described[i].buffer_id(), described[i].call_id()};
    pending_[key] = {std::move(fds[i]), now, described[i].hold_generation()};
  }
  while (pending_.size() > kMostPendingFds) {
    pending_.erase(std::min_element(
        pending_.begin(), pending_.end(),
        [](const auto& a, const auto& b) { return a.second.since < b.second.since; }));
  }
}

absl::Duration Client::Impl::SetReceiveTimeout(int fd, absl::Duration d) {
  d = std::max(d, absl::Milliseconds(1));
  const timeval tv = absl::ToTimeval(d);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
    return absl::ZeroDuration();
  }
  return d;
}

}  // namespace halloc
