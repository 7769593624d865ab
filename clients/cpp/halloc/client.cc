#include "clients/cpp/halloc/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client_impl.h"
#include "halloc/v1/allocator.grpc.pb.h"

namespace halloc {
namespace {

// The pages of one paged call (List, Dump): all of them within the call's
// timeout, as any call; each reply's next_page_token the next request's.
// A daemon, or something posing as one, must not keep a caller asking,
// and gathering, forever (nor for as long as an infinite timeout lasts):
// a token given twice (in a row or in a cycle), or more rows than any
// hallocd holds (each page counting one at least), is DATA_LOSS. Tokens
// are remembered by hash: a page may bring one of megabytes.
class Pages {
 public:
  Pages(absl::string_view rpc, absl::Duration timeout)
      : rpc_(rpc), deadline_(absl::Now() + timeout) {}
  absl::Time deadline() const { return deadline_; }
  // Takes `next` as `token` after a page of `rows` more rows.
  absl::Status Next(std::string* token, std::string* next, size_t rows) {
    rows_ += std::max<size_t>(rows, 1);
    if (rows_ > kMostRows) {
      return absl::DataLossError(absl::StrCat(rpc_, ": hallocd's pages hold more than ", kMostRows,
                                              " rows (pages would never end)"));
    }
    if (!next->empty() && !seen_.insert(absl::HashOf(*next)).second) {
      return absl::DataLossError(
          absl::StrCat(rpc_, ": hallocd gave a page token twice (pages would never end)"));
    }
    *token = std::move(*next);
    return absl::OkStatus();
  }

 private:
  // Twice 2^20, the fds a process may have under the kernel's default
  // fs.nr_open, one a buffer (hallocd.service's LimitNOFILE: 262144).
  static constexpr size_t kMostRows = size_t{1} << 21;
  const absl::string_view rpc_;
  const absl::Time deadline_;
  size_t rows_ = 0;
  absl::flat_hash_set<size_t> seen_;
};

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

// A failed call hallocd may have carried out all the same: its deadline
// passed, it was cancelled, or the connection went before the reply came.
bool MayStillDeliver(const absl::Status& s) {
  return absl::IsDeadlineExceeded(s) || absl::IsCancelled(s) || absl::IsUnavailable(s);
}

// A broker reply hallocd could not fit in one record (a BufferInfo listing
// the thousands of sessions that hold a buffer, for its owner): the
// Describe goes again over gRPC. Nothing else a Describe is answered with
// on the socket is RESOURCE_EXHAUSTED.
bool TooLargeForARecord(const absl::Status& s) { return absl::IsResourceExhausted(s); }

}  // namespace

absl::StatusOr<Client> Client::Connect(const ConnectOptions& options) {
  const auto [control, broker_path] =
      ClientSocketPaths(options.control_socket, options.broker_socket);
  ASSIGN_OR_RETURN(BrokerConnection conn, ConnectBroker(broker_path, options.timeout));
  // Calls wait for the channel (ClientContext::set_wait_for_ready, Impl::
  // Context) and a failed connect is tried again soon: any local user can
  // keep the control socket's backlog full for a while (gRPC's connect is
  // non-blocking: EAGAIN at once), and with gRPC's defaults (1 s, growing
  // to 120 s) a client kept out for a minute stayed out for minutes more.
  grpc::ChannelArguments args;
  // (Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC takes it for the time each
  // connect may take, 20 s by default, which a connection queued behind a
  // flood may need.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Connections of this channel's own, not from gRPC's process-wide pool: a
  // forked child inherits that pool, and its own Client's channel took the
  // parent's connection (the two then wrote HTTP/2 frames over one socket,
  // and hallocd judged the child by its parent's connection). Each Client
  // has its own connection then, as each has its own broker socket.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
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
bool Client::live_revoke() const { return impl_->welcome_.live_revoke(); }

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
  // The reply and its fds within one timeout (the fds come first).
  const absl::Time deadline = absl::Now() + impl_->timeout_;
  absl::StatusOr<v1::AllocateResponse> resp =
      impl_->Call(&v1::Allocator::Stub::Allocate, req, "Allocate", deadline);
  if (!resp.ok()) {
    if (req.call_id() != 0 && MayStillDeliver(resp.status())) {
      impl_->AbandonCall(req.call_id(), Impl::GiveBackWith::kBuffers);
    }
    return resp.status();
  }
  out.reserve(resp->buffers_size());
  std::vector<uint64_t> ids;
  for (const v1::BufferInfo& info : resp->buffers()) ids.push_back(info.id());
  for (v1::BufferInfo& info : *resp->mutable_buffers()) {
    absl::StatusOr<Buffer> b = impl_->Receive(std::move(info), req.call_id(), deadline);
    if (!b.ok()) {
      // hallocd holds them all (its reply said so): given back now, not
      // left charged until the session ends (those whose fds were cut on
      // the way were given back already: then this one is NOT_FOUND).
      out.clear();
      Release(ids).IgnoreError();
      // Fds that come later still are closed as they come.
      if (req.call_id() != 0) impl_->AbandonCall(req.call_id(), Impl::GiveBackWith::kNothing);
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
    *breq.mutable_describe() = req;
    absl::StatusOr<Impl::Reply> r = impl_->BrokerCall(std::move(breq), "Describe");
    if (!TooLargeForARecord(r.status())) {
      RETURN_IF_ERROR(r.status());
      return std::move(*r->reply.mutable_describe()->mutable_buffer());
    }
  }
  ASSIGN_OR_RETURN(v1::DescribeResponse resp,
                   impl_->Call(&v1::Allocator::Stub::Describe, req, "Describe"));
  return resp.buffer();
}

absl::StatusOr<std::vector<v1::BufferInfo>> Client::List(bool all) {
  v1::ListRequest req;
  req.set_all(all);
  std::vector<v1::BufferInfo> out;
  Pages pages("List", impl_->timeout_);
  do {  // page by page (ListRequest.page_token)
    ASSIGN_OR_RETURN(v1::ListResponse resp,
                     impl_->Call(&v1::Allocator::Stub::List, req, "List", pages.deadline()));
    for (v1::BufferInfo& b : *resp.mutable_buffers()) out.push_back(std::move(b));
    RETURN_IF_ERROR(
        pages.Next(req.mutable_page_token(), resp.mutable_next_page_token(), resp.buffers_size()));
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
  Pages pages("Dump", impl_->timeout_);
  do {  // page by page (DumpRequest.page_token)
    ASSIGN_OR_RETURN(v1::DumpResponse resp,
                     impl_->Call(&v1::Allocator::Stub::Dump, req, "Dump", pages.deadline()));
    const size_t rows = resp.sessions_size() + resp.clients_size();
    for (v1::SessionUsage& u : *resp.mutable_sessions()) *all.add_sessions() = std::move(u);
    for (v1::ClientQuota& q : *resp.mutable_clients()) *all.add_clients() = std::move(q);
    RETURN_IF_ERROR(pages.Next(req.mutable_page_token(), resp.mutable_next_page_token(), rows));
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
  RETURN_IF_ERROR(impl_->ImportBegins(req.call_id()));
  const absl::Time deadline = absl::Now() + impl_->timeout_;  // the reply and its fd
  absl::StatusOr<v1::ImportResponse> resp =
      impl_->Call(&v1::Allocator::Stub::Import, req, "Import", deadline);
  if (!resp.ok()) {
    // hallocd may have sent the fd all the same (the call's deadline passed
    // after it did): nobody will take it, so it is closed as it comes, and
    // the reference the import is on the session's hold goes back with it
    // (hallocd sends no fd once it sees the call gave up: then nothing
    // comes, and nothing was imported).
    if (req.call_id() != 0 && MayStillDeliver(resp.status())) {
      impl_->AbandonCall(req.call_id(), Impl::GiveBackWith::kReferences);
    }
    impl_->ImportEnds(req.call_id());
    return resp.status();
  }
  const uint64_t buffer_id = resp->buffer().id();
  const uint64_t hold_generation = resp->hold_generation();
  absl::StatusOr<Buffer> b =
      impl_->Receive(std::move(*resp->mutable_buffer()), req.call_id(), deadline);
  if (!b.ok()) {
    // hallocd delivered it (its reply came): the reference goes back now;
    // an fd that comes later still is closed as it comes.
    if (req.call_id() != 0) impl_->AbandonCall(req.call_id(), Impl::GiveBackWith::kNothing);
    impl_->GiveBackReference(buffer_id, hold_generation);
  }
  impl_->ImportEnds(req.call_id());
  return b;
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
    *breq.mutable_set_metadata() = req;
    // (Its answer lists no holders: it always fits a record.)
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
