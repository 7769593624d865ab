#include "service/allocator.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/connection_limits.h"
#include "service/layout/layout.h"
#include "service/metadata.h"
#include "service/policy/decide.h"
#include "service/util/clock.h"
#include "service/util/last_reference_poll.h"
#include "service/util/log_limit.h"

namespace halloc {

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
  // What the rule of a session holding another's Allocate lets it hold
  // (DecideHeld); read-write for the session's own.
  CpuAccess held_cap = CpuAccess::kReadWrite;
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

// How the registry follows released memory on `backend`: asking it, for
// dma-bufs; else (memfds) the registry's own inotify watch.
std::shared_ptr<LastReferenceFollower> ReleasedMemoryFollower(const Backend& backend) {
  if (backend.last_reference() != Backend::LastReference::kPolled) return nullptr;
  return std::make_shared<LastReferencePoll>(
      [&backend](int fd) { return backend.IsLastReference(fd); });
}

}  // namespace

Allocator::Allocator(std::unique_ptr<Backend> backend, Limits limits,
                     std::shared_ptr<const Policy> policy)
    : backend_(std::move(backend)),
      limits_(limits),
      registry_(std::string(backend_->name()), backend_->MakesDmaBufs(),
                limits.max_buffers_per_session,
                ReleasedMemoryFollower(*backend_)),
      policy_(std::move(policy)) {
  registry_.SetMaxBuffers(MaxBuffers(*policy_));
}

uint64_t Allocator::MaxBuffers(const Policy& policy) const {
  if (limits_.max_buffers != 0) return limits_.max_buffers;
  return BufferRoom(policy, FdLimit(), backend_->max_stocked_buffers());
}

void Allocator::SetPolicy(std::shared_ptr<const Policy> policy) {
  // One reload at a time; the policy's lock is not held into the
  // registry's (a judge under the registry's lock counts a denial).
  absl::MutexLock reload(&reload_mu_);
  registry_.SetMaxBuffers(MaxBuffers(*policy));
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
    absl::MutexLock lock(&denials_mu_);
    ++denials_[rule];
  }
  return status;
}

Allocator::~Allocator() = default;

// --- Sessions --------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Session>> Allocator::OpenSession(Identity creds,
                                                                std::shared_ptr<FdChannel> fds,
                                                                SessionProcess process) {
  std::shared_ptr<Session> session = sessions_.Open(creds, std::move(fds), std::move(process));
  registry_.Join(session->id(), creds);
  return session;
}

void Allocator::CloseSession(uint64_t session_id) {
  // The token dies first: no new call finds the session while its holds go.
  if (sessions_.Close(session_id) == nullptr) return;
  registry_.Leave(session_id);
}

absl::StatusOr<std::shared_ptr<Session>> Allocator::Authenticate(
    absl::string_view token) const {
  return sessions_.Authenticate(token);
}

// --- Allocation ------------------------------------------------------------

uint64_t Allocator::PlannedBytes(const v1::AllocateRequest& req) const {
  absl::StatusOr<Plan> plan = MakePlan(req.desc(), req.count(), nullptr);
  return plan.ok() ? plan->size * plan->count : 0;
}

absl::StatusOr<Allocator::Plan> Allocator::MakePlan(const v1::BufferDescriptor& desc,
                                                    uint32_t count, const Identity* caller,
                                                    const Identity* reader) const {
  Plan plan;
  const Rule* rule = nullptr;  // the caller's
  if (caller != nullptr) {
    // One the policy lets allocate nothing is told so first: not what the
    // backend cannot do nor hallocd's limits (refusals that would be
    // neither audited nor counted as the policy's).
    plan.policy = policy();
    ASSIGN_OR_RETURN(rule, DecideRule(*plan.policy, *caller, "Allocate"));
  }
  plan.count = count == 0 ? 1 : count;
  // All fds of a call travel in one record (see Deliver).
  const uint64_t max_count =
      std::min<uint64_t>(limits_.max_count_per_call, kMaxFdsPerRecord);
  if (plan.count > max_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "count ", count, " exceeds the limit of ", max_count, " buffers per call"));
  }
  // More than a session may ever hold: no release could make room.
  if (plan.count > limits_.max_buffers_per_session) {
    return absl::InvalidArgumentError(absl::StrCat("count ", count, " exceeds the ",
                                                   limits_.max_buffers_per_session,
                                                   " buffers a session may hold"));
  }
  RETURN_IF_ERROR(ValidateName(desc.name()));
  plan.name = desc.name().empty() ? "buffer" : desc.name();
  RETURN_IF_ERROR(usage::Validate(desc.usage()));
  plan.usage = desc.usage();
  // A client that asks only to read gets a read-only fd; protected content
  // is for devices only, the owner's CPU included.
  if (usage::WantsCpuRead(desc.usage()) && !usage::WantsCpuWrite(desc.usage())) {
    plan.owner_access = CpuAccess::kRead;
  }
  if (desc.usage() & usage::kProtected) plan.owner_access = CpuAccess::kNone;

  uint64_t bytes = 0;
  switch (desc.kind_case()) {
    case v1::BufferDescriptor::kSize:
      bytes = desc.size();
      if (bytes == 0) return absl::InvalidArgumentError("size must be > 0");
      break;
    case v1::BufferDescriptor::kImage: {
      // Images as large as blobs may be (--max_buffer_bytes), not the
      // layout's own default (4 GiB).
      layout::Options options;
      options.limits.max_size = limits_.max_buffer_bytes;
      ASSIGN_OR_RETURN(v1::BufferLayout layout,
                       layout::Compute(desc.image(), desc.usage(), options));
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
    const AllocateAsk ask{plan.usage,        bytes,      std::string(backend_->name()),
                          plan.owner_access, plan.count, plan.size};
    // Asked on a session's socket by a process another rule may judge
    // (another uid's, or one the session's exe rule does not vouch for):
    // the buffers are held in the session's name, their fds go there and
    // it pays, so no wider than its own rule allows, widened or not
    // (decide.h: a wider rule's Allocate gave a session capped at read a
    // read-write hold to share on), and within its quota. (The session's
    // own requests, the usual case, need no second Match.)
    std::optional<HeldBy> held;
    if (reader != nullptr && !plan.policy->JudgesAlike(*caller, *reader)) {
      held = HeldBy{plan.policy->Match(*reader), reader};
    }
    absl::StatusOr<AllocateDecision> d = DecideAllocate(*rule, *caller, ask, held);
    if (!d.ok()) return d.status();                 // counted by Allocate, not by IsSupported
    if (held) plan.held_cap = held->rule->max_cpu;  // (refused above without one)
    plan.owner_access = d->owner_access;
    RETURN_IF_ERROR(CheckAttachLimit(*d->rule));
    plan.decision = *std::move(d);
  }
  // A usage that asks only to read narrows the owner's fd as a safeguard
  // (gralloc's CPU bits are hints): where the backend cannot make a
  // read-only fd (dma-heaps, udmabuf; memfd where udmabuf could rewrap
  // it, or for a caller of hallocd's own uid), the owner gets what the
  // rule allows, read-write, and its BufferInfo says so. A rule's own cap
  // is no hint: refused below.
  // Whoever will hold the fds: the caller, and the process reading the
  // session's socket where another asked on it.
  std::vector<Backend::Holder> holders;
  if (caller != nullptr) holders.push_back(HolderOf(*caller));
  if (reader != nullptr) holders.push_back(HolderOf(*reader));
  const CpuAccess allowed =
      Narrower(rule != nullptr ? rule->max_cpu : CpuAccess::kReadWrite, plan.held_cap);
  if (plan.owner_access == CpuAccess::kRead && allowed == CpuAccess::kReadWrite &&
      !Enforceable(CpuAccess::kRead, holders)) {
    plan.owner_access = CpuAccess::kReadWrite;
  }
  RETURN_IF_ERROR(CheckEnforce(plan.owner_access, holders,
                               rule != nullptr && rule->max_cpu == plan.owner_access
                                   ? absl::StrCat(" (max_cpu_access of rule '", rule->name, "')")
                                   : std::string()));
  return plan;
}

v1::IsSupportedResponse Allocator::IsSupported(const v1::IsSupportedRequest& req,
                                               const Identity* caller,
                                               const Identity* reader) const {
  v1::IsSupportedResponse resp;
  absl::StatusOr<Plan> plan = MakePlan(req.desc(), req.count(), caller, reader);
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
    FdChannel& channel, bool may_wait) {
  const absl::Time start = MonotonicNow();
  absl::StatusOr<Plan> planned = MakePlan(req.desc(), req.count(), &caller, &session.creds());
  // A refusal is a denial when a call asks; a question (IsSupported) is not.
  if (!planned.ok()) return Counted(planned.status());
  Plan& plan = *planned;
  const AllocateDecision& decision = *plan.decision;
  // Judged now, and again when committing (other sessions of the client
  // race us). The registry may judge twice (after settling released
  // memory): a refusal is counted once, from what it returns.
  auto quota = [&](uint64_t buffers, uint64_t bytes) {
    return CheckQuota(*decision.quota_rule, decision.quota_uid, buffers, bytes, plan.count,
                      plan.size);
  };
  // Given back unless Add takes it (a failure below destroys it after the
  // fds made so far are closed).
  Registry::Reservation reservation;
  if (absl::Status room = registry_.CheckRoom(session.id(), plan.count, decision.quota_key,
                                              quota, may_wait, &reservation,
                                              plan.count * plan.size);
      !room.ok()) {
    // One to be asked again is not a denial yet.
    if (room.GetPayload(Registry::kWaitForReleasedMemory)) return room;
    return Counted(room);
  }
  const bool charge_until_gone =
      decision.charge_until_gone &&
      backend_->last_reference() != Backend::LastReference::kUnseen;
  // Memory comes from the backend outside every lock.
  std::vector<std::shared_ptr<BufferRecord>> fresh;
  fresh.reserve(plan.count);
  for (uint32_t i = 0; i < plan.count; ++i) {
    ASSIGN_OR_RETURN(UniqueFd fd, backend_->Allocate({plan.size, plan.name,
                                                      plan.usage, decision.attach}));
    auto buffer = std::make_shared<BufferRecord>();
    buffer->name = plan.name;
    buffer->size = plan.size;
    buffer->usage = plan.usage;
    buffer->layout = plan.layout;
    buffer->metadata = DefaultMetadata(plan.layout);
    buffer->owner_uid = caller.uid;
    buffer->owner_client = decision.rule->name;
    buffer->charged_to = decision.quota_key;
    buffer->charge_until_gone = charge_until_gone;
    buffer->fd = std::move(fd);
    fresh.push_back(std::move(buffer));
  }
  v1::AllocateResponse resp;
  RETURN_IF_ERROR(Counted(registry_.Add(session.id(), fresh, plan.owner_access, quota,
                                        &resp, std::move(reservation))));
  // fds go out before the reply, so the client never waits for them; all
  // in one record, so a failure leaves none of them with the client.
  std::vector<const BufferRecord*> items;
  items.reserve(fresh.size());
  for (const auto& buffer : fresh) items.push_back(buffer.get());
  absl::Status sent =
      Deliver(channel, items, {plan.owner_access, decision.attach}, req.call_id(), &resp);
  if (!sent.ok()) {
    UndoAllocate(session, resp);
    return sent;
  }
  allocate_latency_.Record(MonotonicNow() - start);
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

Backend::Holder Allocator::HolderOf(const Identity& id) { return {id.uid, id.maps_hallocd_uid}; }

std::optional<Backend::Holder> Allocator::Unbound(CpuAccess access,
                                                  absl::Span<const Backend::Holder> holders) const {
  for (const Backend::Holder& h : holders) {
    if (!backend_->CanEnforceFor(access, h)) return h;
  }
  return std::nullopt;
}

bool Allocator::Enforceable(CpuAccess access, absl::Span<const Backend::Holder> holders) const {
  return backend_->CanEnforce(access) && !Unbound(access, holders).has_value();
}

absl::Status Allocator::CheckEnforce(CpuAccess access, absl::Span<const Backend::Holder> holders,
                                     absl::string_view why) const {
  if (!backend_->CanEnforce(access)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend ", backend_->name(), " cannot enforce CPU access ", CpuAccessName(access), why));
  }
  // The backend could, but not against this holder: it acts as hallocd's uid.
  if (std::optional<Backend::Holder> h = Unbound(access, holders)) {
    return absl::FailedPreconditionError(
        absl::StrCat("backend ", backend_->name(), " cannot enforce CPU access ",
                     CpuAccessName(access), " on uid ", h->uid,
                     h->maps_hallocd_uid ? ", in a user namespace that maps hallocd's own uid"
                                         : ", hallocd's own",
                     " (it may widen the fd)", why));
  }
  return absl::OkStatus();
}

absl::StatusOr<Allocator::Outgoing> Allocator::Prepare(
    absl::Span<const BufferRecord* const> buffers, const ViewRights& rights,
    bool revocable) {
  if (buffers.size() > kMaxFdsPerRecord) {
    return absl::InternalError(absl::StrCat("cannot deliver ", buffers.size(),
                                            " fds in one record"));
  }
  const bool needs_view = revocable || backend_->NeedsView(rights);
  Outgoing out;
  for (const BufferRecord* buffer : buffers) {
    int fd = buffer->fd.get();
    if (revocable) {
      ASSIGN_OR_RETURN(Backend::RevocableView view,
                       backend_->OpenRevocableView(buffer->fd, rights));
      out.view_ids.push_back(view.id);
      out.views.push_back(std::move(view.fd));
    } else if (needs_view) {
      auto open = [&] { return backend_->OpenView(buffer->fd, rights); };
      const bool shared = rights.cpu == CpuAccess::kRead && backend_->SharesReadViews();
      if (shared) RETURN_IF_ERROR(backend_->CheckView(rights));  // each time: it may change
      ASSIGN_OR_RETURN(UniqueFd view, shared ? registry_.ReadView(*buffer, open) : open());
      out.views.push_back(std::move(view));
    }
    if (needs_view) fd = out.views.back().get();
    out.fds.push_back(fd);
    v1::BufferFd* msg = out.info.add_buffers();
    msg->set_buffer_id(buffer->id);
    msg->set_size(buffer->size);
    msg->set_cpu_access(ToProto(rights.cpu));
  }
  return out;
}

absl::Status Allocator::Deliver(FdChannel& channel, absl::Span<const BufferRecord* const> buffers,
                                const ViewRights& rights, uint64_t call_id,
                                const v1::AllocateResponse* reply) {
  ASSIGN_OR_RETURN(Outgoing out, Prepare(buffers, rights, /*revocable=*/false));
  for (v1::BufferFd& b : *out.info.mutable_buffers()) b.set_call_id(call_id);
  return channel.Send(out.info, out.fds, reply);
}

absl::Status Allocator::Release(Session& session,
                                const v1::ReleaseRequest& req) {
  RETURN_IF_ERROR(CheckReleaseIds(req.buffer_ids_size()));
  return registry_.Release(session.id(), req.buffer_ids(), req.import_references(),
                           req.hold_generations());
}

void Allocator::UndoAllocate(Session& session, const v1::AllocateResponse& made) {
  for (const v1::BufferInfo& b : made.buffers()) {
    registry_.Release(session.id(), {b.id()}).IgnoreError();
  }
}

absl::Status Allocator::CheckReleaseIds(uint64_t count) const {
  if (count <= max_release_ids()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("a Release names at most ", max_release_ids(),
                                                 " ids (the most a session may hold), not ",
                                                 count));
}

// --- Queries ---------------------------------------------------------------

namespace {

// A paged call's page: `asked` rows (0, or more than `most`: `most`).
uint32_t PageSize(uint32_t asked, uint32_t most) {
  return asked == 0 ? most : std::min(asked, most);
}

// List{all} and Dump show every client's buffers: for root and the
// daemon's own uid only.
absl::Status CheckOperator(const Session& session, absl::string_view what) {
  const uid_t uid = session.creds().uid;
  if (IsOperatorUid(uid)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      what, " is for root and the daemon's uid; caller is uid ", uid));
}

}  // namespace

absl::StatusOr<v1::BufferInfo> Allocator::Describe(Session& session,
                                                   uint64_t id) const {
  return registry_.Describe(session.id(), id);
}

absl::StatusOr<v1::ListResponse> Allocator::List(Session& session,
                                                 const v1::ListRequest& req) const {
  if (req.all()) RETURN_IF_ERROR(CheckOperator(session, "List{all}"));
  uint64_t after = 0;
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &after)) {
    return absl::InvalidArgumentError(
        "List: page_token is not one hallocd gave (a ListResponse's next_page_token)");
  }
  return registry_.List(session.id(), req.all(), after, PageSize(req.page_size(), kMaxListPage));
}

v1::StatsResponse Allocator::Stats(std::optional<uid_t> only_uid) {
  v1::StatsResponse s;
  registry_.FillStats(&s, only_uid);
  s.set_only_callers_uid(only_uid.has_value());
  s.set_sessions(sessions_.size());
  *s.mutable_allocate_latency() = allocate_latency_.Read();
  const PoolStats pool = backend_->pool_stats();
  for (v1::BackendStats& b : *s.mutable_backends()) {
    b.set_pool_stock_buffers(pool.stocked_buffers);
    b.set_pool_stock_bytes(pool.stocked_bytes);
    b.set_pool_hits_total(pool.hits);
    b.set_pool_misses_total(pool.misses);
    b.set_pool_contended_misses_total(pool.contended);
    b.set_pool_trims_for_room_total(pool.trims_for_room);
  }
  if (!only_uid) {  // counted per rule, not per uid: other users' refusals
    absl::MutexLock lock(&denials_mu_);
    for (const auto& [rule, n] : denials_) (*s.mutable_denials_by_rule())[rule] = n;
  }
  absl::MutexLock lock(&policy_mu_);
  // A path (--policy) may be any bytes; the field must be UTF-8, or the
  // reply fails to parse at every reader.
  s.set_policy_source(Utf8OrEscaped(policy_->source()));
  s.set_policy_reload_failures(reload_failures_);
  return s;
}

absl::StatusOr<v1::DumpResponse> Allocator::Dump(Session& session, const v1::DumpRequest& req) {
  RETURN_IF_ERROR(CheckOperator(session, "Dump"));
  std::shared_ptr<const Policy> pol = policy();
  v1::DumpResponse resp;
  RETURN_IF_ERROR(
      registry_.FillDump(&resp, req.page_token(), PageSize(req.page_size(), kMaxDumpPage)));
  for (v1::SessionUsage& u : *resp.mutable_sessions()) {
    std::shared_ptr<Session> s = sessions_.Find(u.session_id());
    if (s == nullptr) continue;  // closed meanwhile
    if (const Rule* r = pol->Match(s->creds())) u.set_client(r->name);
  }
  for (v1::ClientQuota& q : *resp.mutable_clients()) {
    if (const Rule* r = pol->Find(q.client())) {
      q.set_quota_buffers(r->quota_buffers);
      q.set_quota_bytes(r->quota_bytes);
    }
  }
  return resp;
}

// --- Sharing ---------------------------------------------------------------

absl::StatusOr<v1::Grant> Allocator::Share(Session& session,
                                           const v1::ShareRequest& req) {
  return Share(session, session.creds(), req);
}

namespace {

// Share passes a session's holds on, Import adds to them and Revoke cuts
// other processes' imports off: another uid holding the session's broker
// socket may do none of them as the session, as on gRPC, where a token that
// reached another uid is refused (ControlPeers). (It may Allocate, judged
// as itself but charged as the connection, into the session's holds, and
// Release: broker.proto.)
absl::Status SameUid(const Session& session, const Identity& caller, absl::string_view what) {
  if (caller.uid == session.creds().uid) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      what, " from uid ", caller.uid, " on the broker socket of session ", session.id(), " (uid ",
      session.creds().uid, "): another uid may not ", what, " as that session"));
}

}  // namespace

absl::StatusOr<v1::Grant> Allocator::Share(Session& session, const Identity& caller,
                                           const v1::ShareRequest& req) {
  RETURN_IF_ERROR(SameUid(session, caller, "Share"));
  const bool by_name = req.peer().kind_case() == v1::Peer::kName;
  if (!by_name && req.peer().kind_case() != v1::Peer::kUid) {
    return absl::InvalidArgumentError("share needs a peer: a uid or a client name");
  }
  std::optional<CpuAccess> asked;
  if (req.cpu_access() != v1::CPU_ACCESS_UNSPECIFIED) {
    ASSIGN_OR_RETURN(asked, FromProto(req.cpu_access()));
  }
  std::shared_ptr<const Policy> pol = policy();
  PeerAsk peer;
  if (by_name) peer.name = req.peer().name();
  peer.uid = req.peer().uid();
  RETURN_IF_ERROR(CheckPeerAsk(peer));
  // Judged once the buffer is known to be the caller's: an id it does not
  // hold is NOT_FOUND whatever its rule says (and no denial is counted).
  return registry_.Share(
      session.id(), req.buffer_id(), [&](CpuAccess mine) -> absl::StatusOr<GrantView> {
        absl::StatusOr<SharePeerDecision> to = DecideSharePeer(*pol, caller, peer, req.buffer_id());
        if (!to.ok()) return Counted(to.status());
        absl::StatusOr<CpuAccess> rights =
            DecideShareRights(*to, req.buffer_id(), mine, asked);
        if (!rights.ok()) return Counted(rights.status());
        // A peer named by uid is checked now; every peer again at Import.
        std::vector<Backend::Holder> peer;
        if (!by_name) peer.push_back({req.peer().uid()});
        RETURN_IF_ERROR(CheckEnforce(*rights, peer, absl::StrCat(" for ", to->peer)));
        GrantView grant;
        if (by_name) {
          grant.peer_name = to->receiver->name;
        } else {
          grant.peer_uid = req.peer().uid();
        }
        grant.from_client = to->rule->name;
        grant.from_uid = caller.uid;
        grant.sharer = caller;
        grant.access = *rights;
        grant.explicit_access = asked.has_value();
        return grant;
      });
}

absl::StatusOr<v1::ImportResponse> Allocator::Import(Session& session, absl::string_view token,
                                                     uint64_t call_id,
                                                     absl::FunctionRef<bool()> gave_up) {
  return Import(session, session.creds(), token, call_id, session.fds(), gave_up);
}

absl::StatusOr<v1::ImportResponse> Allocator::Import(Session& session, const Identity& caller,
                                                     absl::string_view token, uint64_t call_id,
                                                     FdChannel& channel,
                                                     absl::FunctionRef<bool()> gave_up) {
  RETURN_IF_ERROR(SameUid(session, caller, "Import"));
  std::shared_ptr<const Policy> pol = policy();
  // A caller no rule matches is refused before the token is looked at: an
  // unknown caller learns nothing about which tokens exist.
  if (absl::StatusOr<const Rule*> r = DecideRule(*pol, caller, "Import"); !r.ok()) {
    return Counted(r.status());
  }
  std::optional<ImportDecision> decision;
  ASSIGN_OR_RETURN(
      Registry::Imported imported,
      registry_.Import(
          session.id(), token,
          [&](const GrantView& grant) -> absl::StatusOr<CpuAccess> {
            // The sharer's side again, under the policy in force now (a
            // reload since the Share may no longer let it share with us);
            // receive_from then sees the rule it matches now.
            absl::StatusOr<const Rule*> sharer = DecideGrantSharer(*pol, caller, grant);
            if (!sharer.ok()) return Counted(sharer.status());
            GrantView now = grant;
            now.from_client = (*sharer)->name;
            absl::StatusOr<ImportDecision> d = DecideImport(*pol, caller, now);
            if (!d.ok()) return Counted(d.status());
            RETURN_IF_ERROR(
                CheckEnforce(d->access, {HolderOf(caller)},
                             absl::StrCat(" (max_cpu_access of rule '", d->rule->name, "')")));
            RETURN_IF_ERROR(CheckAttachLimit(*d->rule));
            decision = *std::move(d);
            return decision->access;
          }));
  const BufferRecord* buffer = imported.buffer.get();
  // On a backend with live revoke every import is its own revocable view,
  // recorded before it leaves, so that a Revoke racing this import either
  // sees it or makes us cut it off ourselves.
  const bool live = backend_->CanRevokeLive();
  v1::ImportResponse answer;
  *answer.mutable_buffer() = std::move(imported.info);
  answer.set_newly_held(imported.newly_held);
  answer.set_hold_generation(imported.generation);
  absl::Status sent = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Outgoing out,
                     Prepare(absl::MakeConstSpan(&buffer, 1),
                             {decision->access, decision->attach}, live));
    out.info.mutable_buffers(0)->set_call_id(call_id);
    out.info.mutable_buffers(0)->set_hold_generation(imported.generation);
    if (live) {
      absl::Status noted =
          registry_.AddImportView(session.id(), imported.grant_id, buffer->id,
                                  decision->access, out.view_ids[0]);
      if (!noted.ok()) return noted;  // its only fd closes with `out`
    }
    // A caller already past its deadline (gRPC) is sent no fd: once sent,
    // the import is delivered, and a caller that gives up later gives its
    // reference back when the fd comes (ReleaseRequest.import_references).
    absl::Status s = gave_up() ? absl::CancelledError(
                                     "the call was cancelled or its deadline passed before its "
                                     "fd was sent; nothing was imported")
                               : channel.SendImport(out.info, out.fds[0], answer);
    if (!s.ok() && live) {
      backend_->RevokeView(buffer->fd, out.view_ids[0]).IgnoreError();
      registry_.DropImportView(session.id(), imported.grant_id, buffer->id, out.view_ids[0]);
    }
    return s;
  }();
  // Not delivered: its reference goes (and the hold with its last: one a
  // concurrent import of the same buffer delivered stays).
  registry_.SettleImport(session.id(), buffer->id, imported.generation, sent.ok());
  if (!sent.ok() && imported.widened_from) {
    // It holds on, with the rights it had: none of this import's.
    registry_.UndoWidening(session.id(), buffer->id, decision->access, *imported.widened_from);
  }
  // The last reference if the session released it meanwhile.
  registry_.DropOffThread(std::move(imported.buffer));
  if (!sent.ok()) return sent;
  return answer;
}

absl::StatusOr<v1::BufferInfo> Allocator::SetMetadata(
    Session& session, const v1::SetMetadataRequest& req) {
  return registry_.SetMetadata(session.id(), req);
}

absl::StatusOr<v1::BufferInfo> Allocator::SetMetadata(Session& session, const Identity& caller,
                                                      const v1::SetMetadataRequest& req) {
  RETURN_IF_ERROR(SameUid(session, caller, "SetMetadata"));
  return SetMetadata(session, req);
}

absl::Status Allocator::Revoke(Session& session, const Identity& caller, uint64_t grant_id) {
  RETURN_IF_ERROR(SameUid(session, caller, "Revoke"));
  return Revoke(session, grant_id);
}

absl::Status Allocator::Revoke(Session& session, uint64_t grant_id) {
  ASSIGN_OR_RETURN(Registry::Revoked revoked,
                   registry_.Revoke(session.id(), grant_id, backend_->CanRevokeLive()));
  absl::Status first_error;
  for (uint64_t view : revoked.views) {
    absl::Status s = backend_->RevokeView(revoked.buffer->fd, view);
    // NOT_FOUND: every fd of that view is already closed.
    if (!s.ok() && !absl::IsNotFound(s) && first_error.ok()) first_error = s;
  }
  // The last reference if the revoke took the last hold.
  registry_.DropOffThread(std::move(revoked.buffer));
  if (!first_error.ok()) {
    return absl::InternalError(absl::StrCat(
        "grant ", grant_id, " withdrawn, but cutting its imports off failed: ",
        first_error.message()));
  }
  return absl::OkStatus();
}

}  // namespace halloc
