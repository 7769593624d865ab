#include "service/allocator.h"

#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "service/layout/layout.h"
#include "service/layout/usage.h"
#include "service/metadata.h"
#include "service/policy/decide.h"
#include "service/util/random.h"
#include "service/util/os_error.h"
#include "service/util/scm.h"
#include "service/util/status_macros.h"

namespace halloc {

struct Allocator::Buffer {
  uint64_t id = 0;
  std::string name;
  uint64_t size = 0;
  uint64_t usage = 0;
  std::optional<v1::BufferLayout> layout;
  // Guarded by mu_.
  v1::BufferMetadata metadata;
  uid_t owner_uid = 0;
  uint64_t owner_session = 0;
  // The owner's client (policy rule) name, and its quota key "rule/uid".
  std::string owner_client;
  std::string charged_to;
  // The daemon's read-write fd; views are opened from it.
  UniqueFd fd;
  // session id → that session's rights. Guarded by mu_.
  absl::flat_hash_map<uint64_t, CpuAccess> holders;
  absl::flat_hash_set<uint64_t> grants;
};

struct Allocator::Grant {
  uint64_t id = 0;
  std::string token;
  uint64_t buffer_id = 0;
  uint64_t from_session = 0;
  // Exactly one of: a client name, or a uid.
  std::string peer_name;
  uid_t peer_uid = 0;
  // The granter's client name and uid, for the receiver's receive_from.
  std::string from_client;
  uid_t from_uid = 0;
  CpuAccess access = CpuAccess::kRead;
  // Whether the sharer asked for `access` explicitly (then a receiver that
  // may hold less is refused, not narrowed).
  bool explicit_access = false;
};

struct Allocator::Plan {
  std::string name;
  uint64_t usage = 0;
  uint64_t size = 0;
  std::optional<v1::BufferLayout> layout;
  CpuAccess owner_access = CpuAccess::kReadWrite;
  uint32_t count = 1;
  // The policy's decision (absent without a caller: IsSupported without a
  // session judges only the descriptor and the backend).
  std::optional<AllocateDecision> decision;
  std::shared_ptr<const Policy> policy;  // keeps the decision's rule alive
};

namespace {

constexpr size_t kMaxNameLength = 63;

uint64_t PageSize() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

absl::Status ValidateName(absl::string_view name) {
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name is ", name.size(), " bytes; at most ", kMaxNameLength));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == ':' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "name '", absl::CHexEscape(name),
          "' has a character outside [A-Za-z0-9_.:-]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Allocator::Allocator(std::unique_ptr<Backend> backend, Limits limits,
                     std::shared_ptr<const Policy> policy)
    : backend_(std::move(backend)), limits_(limits), policy_(std::move(policy)) {}

void Allocator::SetPolicy(std::shared_ptr<const Policy> policy) {
  absl::MutexLock lock(&policy_mu_);
  policy_ = std::move(policy);
}

std::shared_ptr<const Policy> Allocator::policy() const {
  absl::MutexLock lock(&policy_mu_);
  return policy_;
}

void Allocator::CountPolicyReloadFailure() {
  absl::MutexLock lock(&policy_mu_);
  ++reload_failures_;
}

absl::Status Allocator::Counted(absl::Status status) const {
  if (const std::string rule = DecidingRule(status); !rule.empty()) {
    absl::MutexLock lock(&policy_mu_);
    ++denials_[rule];
  }
  return status;
}

Allocator::~Allocator() = default;

std::string Allocator::NewToken() const {
  return absl::BytesToHexString(RandomBytes(16));
}

// --- Sessions --------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Session>> Allocator::OpenSession(
    Identity creds, std::shared_ptr<FdChannel> fds) {
  std::string token = NewToken();
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  auto session =
      std::make_shared<Session>(id, token, creds, std::move(fds));
  sessions_.emplace(id, session);
  session_tokens_.emplace(std::move(token), id);
  return session;
}

void Allocator::CloseSession(uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  std::shared_ptr<Session> session = it->second;
  session->closed_ = true;
  const std::vector<uint64_t> grants(session->grants_.begin(),
                                     session->grants_.end());
  for (uint64_t g : grants) DropGrant(g);
  const std::vector<uint64_t> held(session->buffers_.begin(),
                                   session->buffers_.end());
  for (uint64_t b : held) DropHold(*session, b);
  session_tokens_.erase(session->token());
  sessions_.erase(it);
}

absl::StatusOr<std::shared_ptr<Session>> Allocator::Authenticate(
    absl::string_view token) const {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "no session: connect to the broker socket first and send its token "
        "as metadata 'halloc-session'");
  }
  absl::MutexLock lock(&mu_);
  auto it = session_tokens_.find(token);
  if (it == session_tokens_.end()) {
    return absl::UnauthenticatedError("unknown or closed session token");
  }
  return sessions_.at(it->second);
}

// --- Allocation ------------------------------------------------------------

absl::StatusOr<Allocator::Plan> Allocator::MakePlan(
    const v1::BufferDescriptor& desc, uint32_t count,
    const Identity* caller) const {
  Plan plan;
  plan.count = count == 0 ? 1 : count;
  // All fds of a call travel in one record (see Deliver).
  const uint64_t max_count =
      std::min<uint64_t>(limits_.max_count_per_call, kMaxFdsPerRecord);
  if (plan.count > max_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "count ", count, " exceeds the limit of ", max_count, " buffers per call"));
  }
  RETURN_IF_ERROR(ValidateName(desc.name()));
  plan.name = desc.name().empty() ? "buffer" : desc.name();
  RETURN_IF_ERROR(usage::Validate(desc.usage()));
  plan.usage = desc.usage();
  // A client that asks only to read gets a read-only fd.
  if (usage::WantsCpuRead(desc.usage()) && !usage::WantsCpuWrite(desc.usage())) {
    plan.owner_access = CpuAccess::kRead;
  }

  uint64_t bytes = 0;
  switch (desc.kind_case()) {
    case v1::BufferDescriptor::kSize:
      bytes = desc.size();
      if (bytes == 0) return absl::InvalidArgumentError("size must be > 0");
      break;
    case v1::BufferDescriptor::kImage: {
      ASSIGN_OR_RETURN(v1::BufferLayout layout,
                       layout::Compute(desc.image(), desc.usage()));
      bytes = layout.size();
      plan.layout = std::move(layout);
      break;
    }
    case v1::BufferDescriptor::KIND_NOT_SET:
      return absl::InvalidArgumentError(
          "descriptor has neither a size (blob) nor an image");
  }
  if (bytes > limits_.max_buffer_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "buffer of ", bytes, " bytes exceeds the limit of ",
        limits_.max_buffer_bytes));
  }
  const uint64_t page = PageSize();
  plan.size = (bytes + page - 1) / page * page;  // no wrap: bytes ≤ limit
  if ((plan.usage & usage::kProtected) && !backend_->CanProtect()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend ", backend_->name(),
        " cannot hold protected content (usage PROTECTED): the CPU of any "
        "holder could read it"));
  }
  if (caller != nullptr) {
    plan.policy = policy();
    absl::StatusOr<AllocateDecision> d = DecideAllocate(
        *plan.policy, *caller,
        {plan.usage, plan.size, std::string(backend_->name()), plan.owner_access});
    if (!d.ok()) return Counted(d.status());
    plan.owner_access = d->owner_access;
    RETURN_IF_ERROR(CheckAttachLimit(*d->rule));
    plan.decision = *std::move(d);
  }
  if (!backend_->CanEnforce(plan.owner_access)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend ", backend_->name(), " cannot enforce CPU access ",
        CpuAccessName(plan.owner_access),
        plan.decision ? absl::StrCat(" (max_cpu_access of rule '", plan.decision->rule->name, "')")
                      : std::string()));
  }
  return plan;
}

v1::IsSupportedResponse Allocator::IsSupported(
    const v1::IsSupportedRequest& req, const Session* session) const {
  v1::IsSupportedResponse resp;
  absl::StatusOr<Plan> plan =
      MakePlan(req.desc(), req.count(), session ? &session->creds() : nullptr);
  resp.set_supported(plan.ok());
  if (!plan.ok()) {
    resp.set_code(static_cast<int>(plan.status().code()));
    resp.set_reason(std::string(plan.status().message()));
    return resp;
  }
  if (plan->layout) *resp.mutable_layout() = *plan->layout;
  resp.set_backend(std::string(backend_->name()));
  return resp;
}

absl::StatusOr<v1::AllocateResponse> Allocator::Allocate(
    Session& session, const v1::AllocateRequest& req) {
  return Allocate(session, session.creds(), req, session.fds());
}

absl::StatusOr<v1::AllocateResponse> Allocator::Allocate(
    Session& session, const Identity& caller, const v1::AllocateRequest& req,
    FdChannel& channel) {
  ASSIGN_OR_RETURN(Plan plan, MakePlan(req.desc(), req.count(), &caller));
  // Checked again when committing (other sessions of the client race us).
  auto check_limits = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    if (session.buffers_.size() + plan.count > limits_.max_buffers_per_session) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "session holds ", session.buffers_.size(), " buffers; limit is ",
          limits_.max_buffers_per_session));
    }
    const auto [buffers, bytes] = charged_[plan.decision->quota_key];
    return Counted(CheckQuota(*plan.decision->rule, caller.uid, buffers, bytes, plan.count,
                              plan.size));
  };
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(check_limits());
  }
  // Memory comes from the backend outside the lock.
  std::vector<std::shared_ptr<Buffer>> fresh;
  fresh.reserve(plan.count);
  for (uint32_t i = 0; i < plan.count; ++i) {
    ASSIGN_OR_RETURN(UniqueFd fd,
                     backend_->Allocate({plan.size, plan.name, plan.usage,
                                         plan.decision->attach}));
    auto buffer = std::make_shared<Buffer>();
    buffer->name = plan.name;
    buffer->size = plan.size;
    buffer->usage = plan.usage;
    buffer->layout = plan.layout;
    buffer->metadata = DefaultMetadata(plan.layout);
    buffer->owner_uid = caller.uid;
    buffer->owner_session = session.id();
    buffer->owner_client = plan.decision->rule->name;
    buffer->charged_to = plan.decision->quota_key;
    buffer->fd = std::move(fd);
    fresh.push_back(std::move(buffer));
  }
  v1::AllocateResponse resp;
  {
    absl::MutexLock lock(&mu_);
    if (session.closed_) return absl::UnauthenticatedError("session closed");
    RETURN_IF_ERROR(check_limits());
    auto& [charged_buffers, charged_bytes] = charged_[plan.decision->quota_key];
    charged_buffers += plan.count;
    charged_bytes += plan.count * plan.size;
    for (auto& buffer : fresh) {
      buffer->id = next_id_++;
      buffer->holders.emplace(session.id(), plan.owner_access);
      session.buffers_.insert(buffer->id);
      buffers_.emplace(buffer->id, buffer);
      live_bytes_ += buffer->size;
      ++allocations_total_;
      *resp.add_buffers() = Info(*buffer, session.id(), false);
    }
  }
  // fds go out before the reply, so the client never waits for them; all
  // in one record, so a failure leaves none of them with the client.
  std::vector<Delivery> items;
  items.reserve(fresh.size());
  for (const auto& buffer : fresh) {
    items.push_back({buffer->id, buffer->size, &buffer->fd});
  }
  absl::Status sent = Deliver(channel, items,
                              {plan.owner_access, plan.decision->attach}, &resp);
  if (!sent.ok()) {
    absl::MutexLock lock(&mu_);
    for (const auto& b : fresh) DropHold(session, b->id);
    return sent;
  }
  return resp;
}

absl::Status Allocator::CheckAttachLimit(const Rule& rule) const {
  if (!AttachDevices(rule).has_value() || backend_->CanLimitAttach()) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "backend ", backend_->name(), " cannot limit which devices attach its "
      "buffers (rule '", rule.name, "' attach_devices)"));
}

absl::Status Allocator::Deliver(FdChannel& channel,
                                absl::Span<const Delivery> items,
                                const ViewRights& rights,
                                const v1::AllocateResponse* reply) {
  if (items.size() > kMaxFdsPerRecord) {
    return absl::InternalError(absl::StrCat("cannot deliver ", items.size(),
                                            " fds in one record"));
  }
  const bool needs_view = backend_->NeedsView(rights);
  std::vector<UniqueFd> views;
  std::vector<int> fds;
  v1::BufferFds info;
  for (const Delivery& d : items) {
    int fd = d.fd->get();
    if (needs_view) {
      ASSIGN_OR_RETURN(UniqueFd view, backend_->OpenView(*d.fd, rights));
      fd = view.get();
      views.push_back(std::move(view));
    }
    fds.push_back(fd);
    v1::BufferFd* msg = info.add_buffers();
    msg->set_buffer_id(d.buffer_id);
    msg->set_size(d.size);
    msg->set_cpu_access(ToProto(rights.cpu));
  }
  return channel.Send(info, fds, reply);
}

// --- Release and bookkeeping -----------------------------------------------

void Allocator::DropHold(Session& session, uint64_t buffer_id) {
  session.buffers_.erase(buffer_id);
  auto it = buffers_.find(buffer_id);
  if (it == buffers_.end()) return;
  Buffer& buffer = *it->second;
  buffer.holders.erase(session.id());
  if (!buffer.holders.empty()) return;
  const std::vector<uint64_t> grants(buffer.grants.begin(),
                                     buffer.grants.end());
  for (uint64_t g : grants) DropGrant(g);
  live_bytes_ -= buffer.size;
  if (auto c = charged_.find(buffer.charged_to); c != charged_.end()) {
    c->second.first -= 1;
    c->second.second -= buffer.size;
    if (c->second.first == 0) charged_.erase(c);
  }
  ++releases_total_;
  reaper_.Add(std::move(it->second));
  buffers_.erase(it);
}

void Allocator::DropGrant(uint64_t grant_id) {
  auto it = grants_.find(grant_id);
  if (it == grants_.end()) return;
  const Grant& grant = *it->second;
  grant_tokens_.erase(grant.token);
  if (auto b = buffers_.find(grant.buffer_id); b != buffers_.end()) {
    b->second->grants.erase(grant_id);
  }
  if (auto s = sessions_.find(grant.from_session); s != sessions_.end()) {
    s->second->grants_.erase(grant_id);
  }
  grants_.erase(it);
}

absl::Status Allocator::Release(Session& session,
                                const v1::ReleaseRequest& req) {
  absl::MutexLock lock(&mu_);
  // All or nothing: check every id before dropping any.
  for (uint64_t id : req.buffer_ids()) {
    if (!session.buffers_.contains(id)) {
      return absl::NotFoundError(absl::StrCat("no buffer ", id, " held"));
    }
  }
  for (uint64_t id : req.buffer_ids()) DropHold(session, id);
  return absl::OkStatus();
}

// --- Queries ---------------------------------------------------------------

v1::BufferInfo Allocator::Info(const Buffer& buffer, uint64_t session_id,
                               bool with_holders) const {
  v1::BufferInfo info;
  info.set_id(buffer.id);
  info.set_name(buffer.name);
  info.set_size(buffer.size);
  info.set_usage(buffer.usage);
  if (buffer.layout) *info.mutable_layout() = *buffer.layout;
  info.set_backend(std::string(backend_->name()));
  info.set_owner_uid(buffer.owner_uid);
  info.set_owned(buffer.owner_session == session_id);
  info.set_protected_content((buffer.usage & usage::kProtected) != 0);
  *info.mutable_metadata() = buffer.metadata;
  if (auto h = buffer.holders.find(session_id); h != buffer.holders.end()) {
    info.set_cpu_access(ToProto(h->second));
  }
  if (with_holders) {
    for (const auto& [sid, access] : buffer.holders) {
      v1::Holder* holder = info.add_holders();
      holder->set_session_id(sid);
      holder->set_owner(sid == buffer.owner_session);
      if (auto s = sessions_.find(sid); s != sessions_.end()) {
        holder->set_uid(s->second->creds().uid);
        holder->set_pid(s->second->creds().pid);
      }
    }
  }
  return info;
}

absl::StatusOr<v1::BufferInfo> Allocator::Describe(Session& session,
                                                   uint64_t id) const {
  absl::MutexLock lock(&mu_);
  if (!session.buffers_.contains(id)) {
    return absl::NotFoundError(absl::StrCat("no buffer ", id, " held"));
  }
  return Info(*buffers_.at(id), session.id(), true);
}

absl::StatusOr<v1::ListResponse> Allocator::List(Session& session,
                                                 bool all) const {
  const uid_t uid = session.creds().uid;
  if (all && uid != 0 && uid != ::getuid()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "List{all} is for root and the daemon's uid; caller is uid ", uid));
  }
  absl::MutexLock lock(&mu_);
  v1::ListResponse resp;
  if (all) {
    for (const auto& [id, buffer] : buffers_) {
      *resp.add_buffers() = Info(*buffer, session.id(), true);
    }
  } else {
    for (uint64_t id : session.buffers_) {
      *resp.add_buffers() = Info(*buffers_.at(id), session.id(), false);
    }
  }
  return resp;
}

v1::StatsResponse Allocator::Stats() const {
  absl::MutexLock lock(&mu_);
  v1::StatsResponse s;
  s.set_live_buffers(buffers_.size());
  s.set_live_bytes(live_bytes_);
  s.set_sessions(sessions_.size());
  s.set_grants(grants_.size());
  s.set_allocations_total(allocations_total_);
  s.set_releases_total(releases_total_);
  v1::BackendStats* b = s.add_backends();
  b->set_name(std::string(backend_->name()));
  b->set_live_buffers(buffers_.size());
  b->set_live_bytes(live_bytes_);
  absl::MutexLock plock(&policy_mu_);
  for (const auto& [rule, n] : denials_) (*s.mutable_denials_by_rule())[rule] = n;
  s.set_policy_source(policy_->source());
  s.set_policy_reload_failures(reload_failures_);
  return s;
}

absl::StatusOr<v1::DumpResponse> Allocator::Dump(Session& session) const {
  const uid_t uid = session.creds().uid;
  if (uid != 0 && uid != ::getuid()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "Dump is for root and the daemon's uid; caller is uid ", uid));
  }
  std::shared_ptr<const Policy> pol = policy();
  absl::MutexLock lock(&mu_);
  v1::DumpResponse resp;
  for (const auto& [id, s] : sessions_) {
    v1::SessionUsage* u = resp.add_sessions();
    u->set_session_id(id);
    u->set_pid(s->creds().pid);
    u->set_uid(s->creds().uid);
    u->set_exe(s->creds().exe);
    if (const Rule* r = pol->Match(s->creds())) u->set_client(r->name);
    for (uint64_t b : s->buffers_) {
      const Buffer& buffer = *buffers_.at(b);
      if (buffer.owner_session == id) {
        u->set_owned_buffers(u->owned_buffers() + 1);
        u->set_owned_bytes(u->owned_bytes() + buffer.size);
      } else {
        u->set_imported_buffers(u->imported_buffers() + 1);
        u->set_imported_bytes(u->imported_bytes() + buffer.size);
      }
    }
  }
  for (const auto& [key, use] : charged_) {
    v1::ClientQuota* q = resp.add_clients();
    const size_t slash = key.rfind('/');
    q->set_client(key.substr(0, slash));
    q->set_uid(static_cast<uint32_t>(std::stoul(key.substr(slash + 1))));
    q->set_buffers(use.first);
    q->set_bytes(use.second);
    if (const Rule* r = pol->Find(q->client())) {
      q->set_quota_buffers(r->quota_buffers);
      q->set_quota_bytes(r->quota_bytes);
    }
  }
  return resp;
}

// --- Sharing ---------------------------------------------------------------

absl::StatusOr<v1::Grant> Allocator::Share(Session& session,
                                           const v1::ShareRequest& req) {
  const bool by_name = req.peer().kind_case() == v1::Peer::kName;
  if (!by_name && req.peer().kind_case() != v1::Peer::kUid) {
    return absl::InvalidArgumentError("share needs a peer: a uid or a client name");
  }
  std::shared_ptr<const Policy> pol = policy();
  PeerAsk peer;
  if (by_name) peer.name = req.peer().name();
  peer.uid = req.peer().uid();
  absl::StatusOr<SharePeerDecision> to =
      DecideSharePeer(*pol, session.creds(), peer, req.buffer_id());
  if (!to.ok()) return Counted(to.status());
  std::optional<CpuAccess> asked;
  if (req.cpu_access() != v1::CPU_ACCESS_UNSPECIFIED) {
    ASSIGN_OR_RETURN(asked, FromProto(req.cpu_access()));
  }

  absl::MutexLock lock(&mu_);
  if (!session.buffers_.contains(req.buffer_id())) {
    return absl::NotFoundError(absl::StrCat("no buffer ", req.buffer_id(), " held"));
  }
  Buffer& buffer = *buffers_.at(req.buffer_id());
  absl::StatusOr<CpuAccess> rights =
      DecideShareRights(*to, req.buffer_id(), buffer.holders.at(session.id()), asked);
  if (!rights.ok()) return Counted(rights.status());
  const CpuAccess access = *rights;
  if (!backend_->CanEnforce(access)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend ", backend_->name(), " cannot enforce CPU access ",
        CpuAccessName(access), " for ", to->peer));
  }
  auto grant = std::make_unique<Grant>();
  grant->id = next_id_++;
  grant->token = NewToken();
  grant->buffer_id = buffer.id;
  grant->from_session = session.id();
  grant->from_client = to->rule->name;
  grant->from_uid = session.creds().uid;
  grant->access = access;
  grant->explicit_access = asked.has_value();
  v1::Grant out;
  out.set_id(grant->id);
  out.set_token(grant->token);
  out.set_buffer_id(buffer.id);
  if (by_name) {
    grant->peer_name = to->receiver->name;
    out.mutable_peer()->set_name(to->receiver->name);
  } else {
    grant->peer_uid = req.peer().uid();
    out.mutable_peer()->set_uid(req.peer().uid());
  }
  out.set_cpu_access(ToProto(access));
  buffer.grants.insert(grant->id);
  session.grants_.insert(grant->id);
  grant_tokens_.emplace(grant->token, grant->id);
  grants_.emplace(grant->id, std::move(grant));
  return out;
}

absl::StatusOr<v1::BufferInfo> Allocator::Import(Session& session,
                                                 absl::string_view token) {
  std::shared_ptr<const Policy> pol = policy();
  // A caller no rule matches is refused before anything else is looked at.
  if (absl::StatusOr<const Rule*> r = DecideRule(*pol, session.creds(), "Import"); !r.ok()) {
    return Counted(r.status());
  }
  std::shared_ptr<Buffer> buffer;
  CpuAccess access;
  std::optional<std::vector<std::string>> attach;
  bool newly_held = false;
  v1::BufferInfo info;
  {
    absl::MutexLock lock(&mu_);
    if (session.closed_) return absl::UnauthenticatedError("session closed");
    auto t = grant_tokens_.find(token);
    if (t == grant_tokens_.end()) {
      return absl::NotFoundError("no such grant (unknown, revoked or expired)");
    }
    const Grant& grant = *grants_.at(t->second);
    absl::StatusOr<ImportDecision> d = DecideImport(
        *pol, session.creds(),
        {grant.id, grant.buffer_id, grant.peer_name, grant.peer_uid, grant.from_client,
         grant.from_uid, grant.access, grant.explicit_access});
    if (!d.ok()) return Counted(d.status());
    access = d->access;
    attach = d->attach;
    if (!backend_->CanEnforce(access)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "backend ", backend_->name(), " cannot enforce CPU access ",
          CpuAccessName(access), " (max_cpu_access of rule '", d->rule->name, "')"));
    }
    RETURN_IF_ERROR(CheckAttachLimit(*d->rule));
    buffer = buffers_.at(grant.buffer_id);
    newly_held = !session.buffers_.contains(buffer->id);
    if (newly_held &&
        session.buffers_.size() >= limits_.max_buffers_per_session) {
      return absl::ResourceExhaustedError("session holds too many buffers");
    }
    // A session that already holds the buffer keeps the wider of its rights.
    auto [h, inserted] = buffer->holders.emplace(session.id(), access);
    if (!inserted && Wider(access, h->second)) {
      h->second = access;
    }
    session.buffers_.insert(buffer->id);
    info = Info(*buffer, session.id(), false);
    info.set_cpu_access(ToProto(access));
  }
  const Delivery item{buffer->id, buffer->size, &buffer->fd};
  absl::Status sent = Deliver(session.fds(), absl::MakeConstSpan(&item, 1),
                              {access, attach}, nullptr);
  if (!sent.ok()) {
    absl::MutexLock lock(&mu_);
    if (newly_held) DropHold(session, buffer->id);
    return sent;
  }
  return info;
}

absl::StatusOr<v1::BufferInfo> Allocator::SetMetadata(
    Session& session, const v1::SetMetadataRequest& req) {
  absl::MutexLock lock(&mu_);
  if (!session.buffers_.contains(req.buffer_id())) {
    return absl::NotFoundError(absl::StrCat("no buffer ", req.buffer_id(), " held"));
  }
  Buffer& buffer = *buffers_.at(req.buffer_id());
  if (req.type() == v1::METADATA_DATASPACE || req.type() == v1::METADATA_BLEND_MODE ||
      req.type() == v1::METADATA_CROP) {
    if (buffer.holders.at(session.id()) != CpuAccess::kReadWrite) {
      return absl::PermissionDeniedError(absl::StrCat(
          "buffer ", buffer.id, " is shared with you read-only; its metadata "
          "is the owner's to set"));
    }
  }
  RETURN_IF_ERROR(SetMetadataField(req.type(), req.value(), buffer.layout, &buffer.metadata));
  return Info(buffer, session.id(), false);
}

absl::Status Allocator::Revoke(Session& session, uint64_t grant_id) {
  absl::MutexLock lock(&mu_);
  if (!session.grants_.contains(grant_id)) {
    return absl::NotFoundError(absl::StrCat("no grant ", grant_id, " made"));
  }
  DropGrant(grant_id);
  return absl::OkStatus();
}

}  // namespace halloc
