#include "clients/cpp/halloc/client.h"

#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

// Takes a paged reply's next_page_token as the next request's: false when
// it repeats the one just sent (a daemon, or something posing as one, that
// would keep a caller asking, and gathering, forever).
bool NextPage(std::string* token, std::string* next) {
  if (!next->empty() && *next == *token) return false;
  *token = std::move(*next);
  return true;
}

absl::Status RepeatedPage(absl::string_view rpc) {
  return absl::DataLossError(
      absl::StrCat(rpc, ": hallocd gave the same page token twice (pages would never end)"));
}

// Whether `req`, put in a BrokerRequest (its kind's tag and length, and the
// request_id and cpu BrokerCall adds: at most 21 bytes more; 64 are kept),
// fits in one broker record. What does not (a token or peer name no real
// one is as long as) goes as a gRPC call instead, still one request, and
// gets its answer (RESOURCE_EXHAUSTED past kMaxRequestBytes there too): a
// record over the limit would be refused with no request id to answer. A
// Release of more ids than fit goes as a ReleaseMany stream.
bool FitsInARecord(const google::protobuf::MessageLite& req) {
  static_assert(kMaxRequestBytes <= kMaxRecordBytes);
  return req.ByteSizeLong() + 64 <= kMaxRequestBytes;
}

// How many times this process has been forked into (in a child: one more
// than in its parent): a Client made before a fork belongs to the parent.
std::atomic<uint64_t> fork_generation{0};
uint64_t ForkGeneration() {
  static const bool counting = [] {
    return ::pthread_atfork(nullptr, nullptr,
                            [] { fork_generation.fetch_add(1, std::memory_order_relaxed); }) == 0;
  }();
  (void)counting;
  return fork_generation.load(std::memory_order_relaxed);
}

// A failed call hallocd may have carried out all the same: its deadline
// passed, it was cancelled, or the connection went before the reply came.
bool MayStillDeliver(const absl::Status& s) {
  return absl::IsDeadlineExceeded(s) || absl::IsCancelled(s) || absl::IsUnavailable(s);
}

absl::Status FromGrpc(const grpc::Status& s, absl::string_view method) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(method, ": ", s.error_message()));
}

}  // namespace

// --- Client ----------------------------------------------------------------

class Client::Impl {
 public:
  Impl(BrokerConnection conn, std::shared_ptr<grpc::Channel> channel,
       const ConnectOptions& options)
      : broker_(std::move(conn.fd)), hello_(std::move(conn.hello)),
        welcome_(std::move(conn.welcome)),
        stub_(v1::Allocator::NewStub(channel)), timeout_(options.timeout),
        fast_path_(options.broker_fast_path),
        receive_timeout_(SetReceiveTimeout(broker_.get(), timeout_ / 2)) {}

  // A context carrying our session token and the call deadline.
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata(kSessionMetadataKey, welcome_.session_token());
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
    return ctx;
  }

  // One unary call with our session token and deadline; errors name `rpc`.
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(
      grpc::Status (v1::Allocator::Stub::*method)(grpc::ClientContext*,
                                                  const Req&, Resp*),
      const Req& req, absl::string_view rpc) {
    RETURN_IF_ERROR(Usable(rpc));
    Resp resp;
    auto ctx = Context();
    RETURN_IF_ERROR(FromGrpc((stub_.get()->*method)(ctx.get(), req, &resp), rpc));
    return resp;
  }

  struct Reply {
    v1::BrokerReply reply;
    std::vector<UniqueFd> fds;
  };

  // More ids than one request carries, released all or nothing as one
  // Release: a ReleaseMany stream of kReleaseIdsPerRequest at a time, the
  // final request marked `last` (errors name Release).
  absl::Status ReleaseMany(absl::Span<const uint64_t> ids) {
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

  // One request on the broker socket and its reply (with the fds that came
  // in the same record). Errors name `rpc`.
  absl::StatusOr<Reply> BrokerCall(v1::BrokerRequest req, absl::string_view rpc) {
    RETURN_IF_ERROR(Usable(rpc));
    const absl::Time deadline = absl::Now() + timeout_;
    const uint64_t id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
    req.set_request_id(id);
    // Where to send the reply from (a hint; see BrokerRequest.cpu).
    req.set_cpu(CurrentCpuHint());
    const bool import = req.has_import_buffer();
    if (import) {
      absl::MutexLock lock(&mu_);
      imports_in_flight_.insert(id);
    }
    if (absl::Status s = Send(req.SerializeAsString(), deadline); !s.ok()) {
      if (import) {
        absl::MutexLock lock(&mu_);
        imports_in_flight_.erase(id);
        GiveBackUnclaimedHolds();
      }
      return Prefixed(s, rpc);
    }
    absl::MutexLock lock(&mu_);
    if (absl::Status s = WaitFor([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                                     mu_) { return replies_.contains(id); },
                                 deadline);
        !s.ok()) {
      // Whatever the daemon answers later is given back, not leaked.
      abandoned_.insert(id);
      return Prefixed(s, rpc);
    }
    auto it = replies_.find(id);
    absl::StatusOr<Reply> r = std::move(it->second);
    replies_.erase(it);
    if (!r.ok()) return Prefixed(r.status(), rpc);
    if (absl::Status s = ReplyStatus(r->reply); !s.ok()) return Prefixed(s, rpc);
    return r;
  }

  // A call id for ImportRequest.call_id and AllocateRequest.call_id: unique
  // on this connection, like the broker's request ids (it comes from the
  // same counter).
  uint64_t NextCallId() { return next_request_id_.fetch_add(1, std::memory_order_relaxed); }

  // The fd for `buffer_id` that a gRPC call (`call_id`, 0 where hallocd
  // echoes none) had
  // sent ahead of its reply: normally queued already. Records for others
  // are kept for them.
  absl::StatusOr<UniqueFd> TakeFd(uint64_t buffer_id, uint64_t call_id) {
    const absl::Time deadline = absl::Now() + timeout_;
    const FdKey key{buffer_id, call_id};
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(WaitFor([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                                mu_) { return pending_.contains(key); },
                            deadline));
    auto it = pending_.find(key);
    absl::StatusOr<UniqueFd> fd = std::move(it->second.fd);
    pending_.erase(it);
    return fd;
  }

  // OK while this process is the one that connected: after fork() parent
  // and child would share the socket and the request ids, and take each
  // other's replies (buffers of the wrong size, or none).
  absl::Status Usable(absl::string_view rpc) const {
    if (ForkGeneration() == fork_generation_) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        rpc, ": this Client was connected by process ", pid_,
        "; after fork() a child connects a Client of its own"));
  }

  // The gRPC call `call_id` gave up: its fds, should they come (or have
  // come), are closed at once instead of waiting for a taker; an
  // Allocate's buffers (`give_back`) go back to hallocd too (an Import's
  // hold hallocd gives back itself: ImportResponse.newly_held).
  void AbandonCall(uint64_t call_id, bool give_back) {
    absl::MutexLock lock(&mu_);
    std::vector<uint64_t> ids;
    absl::erase_if(pending_, [&](const auto& p) {
      if (p.first.second != call_id) return false;
      ids.push_back(p.first.first);
      return true;
    });
    if (ids.empty()) {
      abandoned_calls_[call_id] = give_back;  // they come later
    } else if (give_back) {
      GiveBack(ids);
    }
  }

  absl::StatusOr<Buffer> Receive(v1::BufferInfo info, uint64_t call_id = 0) {
    ASSIGN_OR_RETURN(UniqueFd fd, TakeFd(info.id(), call_id));
    return Buffer(std::move(info), std::move(fd));
  }

  // Gives back the holds that only imports nobody received made, once no
  // import is in flight.
  void GiveBackUnclaimedHolds() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!imports_in_flight_.empty() || unclaimed_holds_.empty()) return;
    GiveBack(std::vector<uint64_t>(unclaimed_holds_.begin(), unclaimed_holds_.end()));
    unclaimed_holds_.clear();
  }

  // Gives buffers back to the daemon without waiting for its answer (used
  // when their fds were lost on the way, or their call was abandoned).
  void GiveBack(const std::vector<uint64_t>& ids) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ids.empty()) return;
    v1::BrokerRequest req;
    for (uint64_t b : ids) req.mutable_release()->add_buffer_ids(b);
    SendUnanswered(std::move(req));
  }

  // Revokes a grant without waiting for the answer (its call was
  // abandoned).
  void Withdraw(uint64_t grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v1::BrokerRequest req;
    req.mutable_revoke()->set_grant_id(grant_id);
    SendUnanswered(std::move(req));
  }

  // Sends `req` under a new id whose answer is dropped when it comes; if it
  // cannot be sent, the session's end does the same.
  void SendUnanswered(v1::BrokerRequest req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t id = next_request_id_.fetch_add(1, std::memory_order_relaxed);
    req.set_request_id(id);
    if (SendRecord(broker_.get(), req.SerializeAsString(), {}, true).ok()) {
      abandoned_.insert(id);
    }
  }

  const UniqueFd broker_;
  const v1::Hello hello_;
  const v1::Welcome welcome_;
  const std::unique_ptr<v1::Allocator::Stub> stub_;
  const absl::Duration timeout_;
  const bool fast_path_;

 private:
  // Sends one request, waiting while the socket is full (a daemon not
  // reading it) until `deadline` at the most.
  absl::Status Send(const std::string& bytes, absl::Time deadline) {
    for (;;) {
      absl::Status s = SendRecord(broker_.get(), bytes, {}, /*nonblocking=*/true);
      if (!absl::IsResourceExhausted(s)) return s;
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      s = ms > 0 ? WaitWritable(broker_.get(), static_cast<int>(ms))
                 : absl::DeadlineExceededError("");
      if (absl::IsDeadlineExceeded(s)) {
        return absl::DeadlineExceededError(
            "hallocd takes no requests (its broker socket is full)");
      }
      RETURN_IF_ERROR(s);
    }
  }

  // Waits until `ready()` (asked under mu_) or `deadline`. One waiter at a
  // time reads the socket, without the lock, and files what comes for
  // everyone; the others sleep until it has, or until their own deadline:
  // no call waits for another's reply, nor past its own deadline.
  absl::Status WaitFor(absl::FunctionRef<bool()> ready, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (;;) {
      if (ready()) return absl::OkStatus();
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("no answer from hallocd in time");
      }
      if (reading_) {
        // (WithTimeout: the TSan shim in third_party/sanitizers knows it.)
        filed_.WaitWithTimeout(&mu_, deadline - absl::Now());
        continue;
      }
      reading_ = true;
      mu_.Unlock();
      absl::StatusOr<Record> next = ReceiveNext(deadline);
      mu_.Lock();
      reading_ = false;
      absl::Status filed = FileNext(std::move(next));
      filed_.SignalAll();
      RETURN_IF_ERROR(filed);
    }
  }

  // Takes one record off the broker socket, waiting until `deadline` at the
  // most: RESOURCE_EXHAUSTED when none came. One blocking recvmsg per reply
  // while the socket's own receive timeout (SO_RCVTIMEO, half the call
  // timeout) ends before `deadline`: no poll and no failed recvmsg first,
  // the fewest syscalls between a request and its reply. Closer to the
  // deadline, it polls for exactly what is left.
  absl::StatusOr<Record> ReceiveNext(absl::Time deadline) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::ResourceExhaustedError("nothing yet");
    const bool blocking = receive_timeout_ > absl::ZeroDuration() && left >= receive_timeout_;
    if (!blocking) {
      const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(left));
      if (absl::Status s = WaitReadable(broker_.get(), static_cast<int>(ms)); !s.ok()) {
        return absl::IsDeadlineExceeded(s) ? absl::ResourceExhaustedError("nothing yet") : s;
      }
    }
    return ReceiveRecord(broker_.get(), !blocking);
  }

  // Files what ReceiveNext got where its waiter looks.
  absl::Status FileNext(absl::StatusOr<Record> next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
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

  void File(v1::BrokerFrame& frame, std::vector<UniqueFd> fds, bool truncated)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // fds no call claimed (its deadline passed before they came, from a
    // daemon that does not echo call ids) are dropped after a while, looked
    // at with whatever comes next, not only with the next fds.
    const absl::Time now = absl::Now();
    absl::erase_if(pending_, [&](const auto& p) { return now - p.second.since > 2 * timeout_; });
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
      std::vector<uint64_t> ids;
      for (const v1::BufferInfo& b : reply.allocate().buffers()) ids.push_back(b.id());
      const bool abandoned = abandoned_.erase(reply.request_id()) > 0;
      const bool bad = abandoned || truncated ||
                       (reply.has_allocate() && ids.size() != fds.size()) ||
                       (reply.has_import_buffer() && fds.size() != 1);
      if (imports_in_flight_.erase(reply.request_id()) > 0) {
        // An import's fd, if any came, closes here when nobody takes it.
        // Its hold goes back only if this import made it
        // (ImportResponse.newly_held: the session held the buffer by nothing
        // else), and only once no other import is in flight: one may bring
        // the same buffer, held by that same hold.
        // (A refused import carries no import_buffer: it made no hold.)
        if (reply.has_import_buffer()) {
          const uint64_t buffer = reply.import_buffer().buffer().id();
          if (!bad) {
            unclaimed_holds_.erase(buffer);  // a caller holds it now
          } else if (reply.import_buffer().newly_held()) {
            unclaimed_holds_.insert(buffer);
          }
        }
        GiveBackUnclaimedHolds();
      }
      if (bad) {
        GiveBack(ids);
        // A grant its caller never learned of (it gave up): nobody has its
        // token, and it would count against the session's grants, and keep
        // the buffer importable, until the session's end.
        if (abandoned && reply.has_share()) Withdraw(reply.share().grant().id());
        if (!abandoned) {
          replies_[reply.request_id()] =
              truncated ? lost(!reply.has_import_buffer() || reply.import_buffer().newly_held())
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
    if (truncated || described.size() != fds.size()) {
      std::vector<uint64_t> ids;
      for (const v1::BufferFd& b : described) {
        ids.push_back(b.buffer_id());
        pending_[FdKey{b.buffer_id(), b.call_id()}] = {
            truncated ? lost() : absl::DataLossError("malformed frame on the broker socket"),
            absl::Now()};
      }
      GiveBack(ids);
      return;
    }
    // A call's fds come in one record; those of a call that gave up
    // close here (nobody takes them).
    const uint64_t call = described.empty() ? 0 : described.front().call_id();
    auto abandoned = call == 0 ? abandoned_calls_.end() : abandoned_calls_.find(call);
    if (abandoned != abandoned_calls_.end()) {
      std::vector<uint64_t> ids;
      for (const v1::BufferFd& b : described) ids.push_back(b.buffer_id());
      if (abandoned->second) GiveBack(ids);
      abandoned_calls_.erase(abandoned);
      return;
    }
    for (size_t i = 0; i < described.size(); ++i) {
      const FdKey key{described[i].buffer_id(), described[i].call_id()};
      pending_[key] = {std::move(fds[i]), now};
    }
  }

  // Bounds each blocking recvmsg on the broker socket; zero if it could not
  // be set (then every wait polls first).
  static absl::Duration SetReceiveTimeout(int fd, absl::Duration d) {
    d = std::max(d, absl::Milliseconds(1));
    const timeval tv = absl::ToTimeval(d);
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
      return absl::ZeroDuration();
    }
    return d;
  }
  const absl::Duration receive_timeout_;

  // 0 was the handshake's Verify.
  std::atomic<uint64_t> next_request_id_{1};
  const pid_t pid_ = ::getpid();
  const uint64_t fork_generation_ = ForkGeneration();
  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a waiter reads the socket now
  absl::CondVar filed_;                        // it has filed a record
  struct PendingFd {
    absl::StatusOr<UniqueFd> fd;
    absl::Time since;
  };
  // By (buffer id, call id): two imports of one buffer may be in flight.
  using FdKey = std::pair<uint64_t, uint64_t>;
  absl::flat_hash_map<FdKey, PendingFd> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, absl::StatusOr<Reply>> replies_ ABSL_GUARDED_BY(mu_);
  // Requests whose caller stopped waiting (or that nobody waits for).
  absl::flat_hash_set<uint64_t> abandoned_ ABSL_GUARDED_BY(mu_);
  // Calls that gave up before their fds came, and whether to give their
  // buffers back (AbandonCall).
  absl::flat_hash_map<uint64_t, bool> abandoned_calls_ ABSL_GUARDED_BY(mu_);
  // Request ids of broker Imports sent and not answered yet (given up or
  // not), and the buffers whose hold only an Import nobody received made
  // (given back once none is in flight: GiveBackUnclaimedHolds).
  absl::flat_hash_set<uint64_t> imports_in_flight_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> unclaimed_holds_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<Client> Client::Connect(const ConnectOptions& options) {
  std::string control = NamedSocketPath(options.control_socket, kControlSocketEnv);
  std::string broker_path = NamedSocketPath(options.broker_socket, kBrokerSocketEnv);
  if (control.empty() || broker_path.empty()) {
    // Those nobody named come from one directory (ClientSocketDir).
    const std::string dir = ClientSocketDir();
    if (control.empty()) control = absl::StrCat(dir, "/", kControlSocketFile);
    if (broker_path.empty()) broker_path = absl::StrCat(dir, "/", kBrokerSocketFile);
  }
  ASSIGN_OR_RETURN(BrokerConnection conn, ConnectBroker(broker_path, options.timeout));
  grpc::ChannelArguments args;
  auto channel = grpc::CreateCustomChannel(absl::StrCat("unix:", control),
                                           grpc::InsecureChannelCredentials(), args);
  return Client(std::make_unique<Impl>(std::move(conn), std::move(channel), options));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

uint64_t Client::session_id() const { return impl_->welcome_.session_id(); }
uid_t Client::uid() const { return impl_->hello_.uid(); }

absl::StatusOr<Buffer> Client::Allocate(const v1::BufferDescriptor& desc) {
  ASSIGN_OR_RETURN(std::vector<Buffer> buffers, Allocate(desc, 1));
  return std::move(buffers.front());
}

absl::StatusOr<std::vector<Buffer>> Client::Allocate(
    const v1::BufferDescriptor& desc, uint32_t count) {
  v1::AllocateRequest req;
  *req.mutable_desc() = desc;
  req.set_count(count);
  std::vector<Buffer> out;
  if (impl_->fast_path_) {
    v1::BrokerRequest breq;
    *breq.mutable_allocate() = std::move(req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "Allocate"));
    v1::AllocateResponse& resp = *r.reply.mutable_allocate();
    out.reserve(resp.buffers_size());
    for (int i = 0; i < resp.buffers_size(); ++i) {
      out.emplace_back(std::move(*resp.mutable_buffers(i)), std::move(r.fds[i]));
    }
    return AsAsked(std::move(out), count);
  }
  // Where hallocd echoes it, the call id marks this call's fds, so that
  // those of a call that gave up are closed as they come (else 0, as it
  // sends; they are dropped after twice the timeout).
  if (impl_->welcome_.allocate_call_ids()) req.set_call_id(impl_->NextCallId());
  absl::StatusOr<v1::AllocateResponse> resp =
      impl_->Call(&v1::Allocator::Stub::Allocate, req, "Allocate");
  if (!resp.ok()) {
    if (req.call_id() != 0 && MayStillDeliver(resp.status())) {
      impl_->AbandonCall(req.call_id(), /*give_back=*/true);
    }
    return resp.status();
  }
  out.reserve(resp->buffers_size());
  std::vector<uint64_t> ids;
  for (const v1::BufferInfo& info : resp->buffers()) ids.push_back(info.id());
  for (v1::BufferInfo& info : *resp->mutable_buffers()) {
    absl::StatusOr<Buffer> b = impl_->Receive(std::move(info), req.call_id());
    if (!b.ok()) {
      // hallocd holds them all (its reply said so): given back now, not
      // left charged until the session ends (those whose fds were cut on
      // the way were given back already: then this one is NOT_FOUND).
      out.clear();
      Release(ids).IgnoreError();
      return b.status();
    }
    out.push_back(*std::move(b));
  }
  return AsAsked(std::move(out), count);
}

absl::StatusOr<std::vector<Buffer>> Client::AsAsked(std::vector<Buffer> buffers,
                                                    uint32_t count) {
  const uint32_t asked = std::max<uint32_t>(count, 1);  // 0 asks for one
  if (buffers.size() == asked) return buffers;
  // Not what was asked for: given back, and said so.
  std::vector<uint64_t> ids;
  for (const Buffer& b : buffers) ids.push_back(b.id());
  if (!ids.empty()) Release(ids).IgnoreError();
  return absl::DataLossError(absl::StrCat("Allocate: hallocd answered ", buffers.size(),
                                          " buffers for ", asked, " asked"));
}

absl::Status Client::Release(uint64_t buffer_id) {
  return Release(absl::MakeConstSpan(&buffer_id, 1));
}

absl::Status Client::Release(absl::Span<const uint64_t> buffer_ids) {
  v1::ReleaseRequest req;
  for (uint64_t id : buffer_ids) req.add_buffer_ids(id);
  if (!FitsInARecord(req)) return impl_->ReleaseMany(buffer_ids);
  if (impl_->fast_path_) {
    v1::BrokerRequest breq;
    breq.mutable_release()->Swap(&req);
    return impl_->BrokerCall(std::move(breq), "Release").status();
  }
  return impl_->Call(&v1::Allocator::Stub::Release, req, "Release").status();
}

absl::StatusOr<v1::BufferInfo> Client::Describe(uint64_t buffer_id) {
  v1::DescribeRequest req;
  req.set_buffer_id(buffer_id);
  if (impl_->fast_path_ && impl_->welcome_.broker_metadata()) {
    v1::BrokerRequest breq;
    breq.mutable_describe()->Swap(&req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "Describe"));
    return std::move(*r.reply.mutable_describe()->mutable_buffer());
  }
  ASSIGN_OR_RETURN(v1::DescribeResponse resp,
                   impl_->Call(&v1::Allocator::Stub::Describe, req, "Describe"));
  return resp.buffer();
}

absl::StatusOr<std::vector<v1::BufferInfo>> Client::List(bool all) {
  v1::ListRequest req;
  req.set_all(all);
  std::vector<v1::BufferInfo> out;
  do {  // page by page (ListRequest.page_token)
    ASSIGN_OR_RETURN(v1::ListResponse resp, impl_->Call(&v1::Allocator::Stub::List, req, "List"));
    for (v1::BufferInfo& b : *resp.mutable_buffers()) out.push_back(std::move(b));
    if (!NextPage(req.mutable_page_token(), resp.mutable_next_page_token())) {
      return RepeatedPage("List");
    }
  } while (!req.page_token().empty());
  return out;
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  ASSIGN_OR_RETURN(v1::StatsResponse resp,
                   impl_->Call(&v1::Allocator::Stub::Stats, v1::StatsRequest(), "Stats"));
  return resp;
}

absl::StatusOr<v1::IsSupportedResponse> Client::IsSupported(
    const v1::BufferDescriptor& desc, uint32_t count) {
  v1::IsSupportedRequest req;
  *req.mutable_desc() = desc;
  req.set_count(count);
  if (impl_->fast_path_ && impl_->welcome_.broker_is_supported()) {
    v1::BrokerRequest breq;
    breq.mutable_is_supported()->Swap(&req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "IsSupported"));
    return std::move(*r.reply.mutable_is_supported());
  }
  ASSIGN_OR_RETURN(v1::IsSupportedResponse resp,
                   impl_->Call(&v1::Allocator::Stub::IsSupported, req, "IsSupported"));
  return resp;
}

absl::StatusOr<v1::Grant> Client::Share(uint64_t buffer_id, uid_t peer_uid,
                                        v1::CpuAccess cpu) {
  v1::ShareRequest req;
  req.set_buffer_id(buffer_id);
  req.mutable_peer()->set_uid(peer_uid);
  req.set_cpu_access(cpu);
  return ShareAs(std::move(req));
}

absl::StatusOr<v1::Grant> Client::ShareWithClient(uint64_t buffer_id,
                                                  absl::string_view peer_name,
                                                  v1::CpuAccess cpu) {
  v1::ShareRequest req;
  req.set_buffer_id(buffer_id);
  req.mutable_peer()->set_name(std::string(peer_name));
  req.set_cpu_access(cpu);
  return ShareAs(std::move(req));
}

absl::StatusOr<v1::Grant> Client::ShareAs(v1::ShareRequest req) {
  if (impl_->fast_path_ && impl_->welcome_.broker_share() && FitsInARecord(req)) {
    v1::BrokerRequest breq;
    breq.mutable_share()->Swap(&req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "Share"));
    if (!r.reply.has_share()) return absl::DataLossError("Share: hallocd's reply carries no grant");
    return std::move(*r.reply.mutable_share()->mutable_grant());
  }
  ASSIGN_OR_RETURN(v1::ShareResponse resp,
                   impl_->Call(&v1::Allocator::Stub::Share, req, "Share"));
  return std::move(*resp.mutable_grant());
}

absl::StatusOr<v1::DumpResponse> Client::Dump() {
  v1::DumpRequest req;
  v1::DumpResponse all;
  do {  // page by page (DumpRequest.page_token)
    ASSIGN_OR_RETURN(v1::DumpResponse resp, impl_->Call(&v1::Allocator::Stub::Dump, req, "Dump"));
    for (v1::SessionUsage& u : *resp.mutable_sessions()) *all.add_sessions() = std::move(u);
    for (v1::ClientQuota& q : *resp.mutable_clients()) *all.add_clients() = std::move(q);
    if (!NextPage(req.mutable_page_token(), resp.mutable_next_page_token())) {
      return RepeatedPage("Dump");
    }
  } while (!req.page_token().empty());
  return all;
}

absl::StatusOr<Buffer> Client::Import(absl::string_view grant_token) {
  v1::ImportRequest req;
  req.set_grant_token(std::string(grant_token));
  if (impl_->fast_path_ && impl_->welcome_.broker_import() && FitsInARecord(req)) {
    // The reply and the fd in one record: both or neither.
    v1::BrokerRequest breq;
    breq.mutable_import_buffer()->Swap(&req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "Import"));
    if (!r.reply.has_import_buffer() || r.fds.size() != 1) {
      return absl::DataLossError("Import: hallocd's reply carries no buffer");
    }
    return Buffer(std::move(*r.reply.mutable_import_buffer()->mutable_buffer()),
                  std::move(r.fds[0]));
  }
  // Two imports of one buffer may be in flight: the call id tells their
  // fds apart, where hallocd echoes it (else 0, as it sends).
  if (impl_->welcome_.import_call_ids()) req.set_call_id(impl_->NextCallId());
  absl::StatusOr<v1::ImportResponse> resp =
      impl_->Call(&v1::Allocator::Stub::Import, req, "Import");
  if (!resp.ok()) {
    // hallocd may deliver the fd all the same (the call's deadline passed
    // while it worked): nobody will take it, so it is closed, not kept.
    if (req.call_id() != 0 && MayStillDeliver(resp.status())) {
      impl_->AbandonCall(req.call_id(), /*give_back=*/false);
    }
    return resp.status();
  }
  return impl_->Receive(std::move(*resp->mutable_buffer()), req.call_id());
}

absl::StatusOr<v1::BufferInfo> Client::SetMetadata(
    uint64_t buffer_id, v1::StandardMetadataType type,
    const v1::BufferMetadata& value) {
  v1::SetMetadataRequest req;
  req.set_buffer_id(buffer_id);
  req.set_type(type);
  *req.mutable_value() = value;
  if (impl_->fast_path_ && impl_->welcome_.broker_metadata()) {
    v1::BrokerRequest breq;
    breq.mutable_set_metadata()->Swap(&req);
    ASSIGN_OR_RETURN(Impl::Reply r, impl_->BrokerCall(std::move(breq), "SetMetadata"));
    return std::move(*r.reply.mutable_set_metadata()->mutable_buffer());
  }
  ASSIGN_OR_RETURN(v1::SetMetadataResponse resp,
                   impl_->Call(&v1::Allocator::Stub::SetMetadata, req, "SetMetadata"));
  return resp.buffer();
}

absl::Status Client::Revoke(uint64_t grant_id) {
  v1::RevokeRequest req;
  req.set_grant_id(grant_id);
  if (impl_->fast_path_ && impl_->welcome_.broker_revoke()) {
    v1::BrokerRequest breq;
    breq.mutable_revoke()->Swap(&req);
    return impl_->BrokerCall(std::move(breq), "Revoke").status();
  }
  return impl_->Call(&v1::Allocator::Stub::Revoke, req, "Revoke").status();
}

absl::Status SupportStatus(const v1::IsSupportedResponse& reply) {
  if (reply.supported()) return absl::OkStatus();
  const absl::StatusCode code = StatusCodeFromWire(reply.code());
  // A refusal is never OK, whatever code it carries.
  return absl::Status(code == absl::StatusCode::kOk ? absl::StatusCode::kUnknown : code,
                      absl::StrCat("not supported: ", reply.reason()));
}

}  // namespace halloc
