// The registry: which buffers are live, who holds each with which rights,
// which grants are open, and what each client is charged.
//
// Pure bookkeeping: it makes no policy decision and touches no backend or
// socket. The allocator (allocator.h) decides with policy/ and hands the
// registry the outcome; where a decision needs the registry's own state
// (the rights a sharer holds, the grant a token names), the allocator passes
// a judge that the registry calls under its lock, so check and commit are
// one step. Every operation is O(1) in the number of live buffers (hash maps
// keyed by id and token), except the listings.
//
// A session is known here from Join (the broker accepted it) until Leave
// (its connection closed); Leave drops every hold and grant it had (a
// grant shared on from an import and imported stays, unusable, for a live
// revoke upstream to reach its importers: GrantRecord::via). A buffer
// lives while any session holds it; its daemon fd is then closed on a
// Reaper thread, outside the lock.
//
// Released memory. A dropped buffer's charge goes back to its client at
// once, unless the buffer is `charge_until_gone`: then it stays charged
// until no fd or mapping of it is left in any process (the client may keep
// its fd or mapping past Release, or have passed it on). The reaper hands
// the daemon's fd to a LastReferenceFollower (a LastReferenceWatch for
// memfds; the allocator gives dma-buf backends a LastReferencePoll); the
// charge is settled when hallocd's limit or a quota would refuse in
// CheckRoom (so a refusal never counts memory that is gone: the refused
// uid's memory is asked about again first, where asking is work), for
// Stats and Dump, and on the way now and then.
//
// Thread-safe.
#ifndef HALLOC_SERVICE_REGISTRY_H_
#define HALLOC_SERVICE_REGISTRY_H_

#include <sys/types.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "clients/cpp/halloc/base/rights.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/allocator.pb.h"
#include "service/policy/decide.h"
#include "service/policy/policy.h"
#include "service/util/last_reference.h"
#include "service/util/reaper.h"

namespace halloc {

// One live buffer. Set up by the allocator before Add; after that only the
// registry writes it (under its lock), and `fd`, `size` and `id` are fixed.
struct BufferRecord {
  uint64_t id = 0;  // assigned by Add
  std::string name;
  uint64_t size = 0;
  uint64_t usage = 0;
  std::optional<v1::BufferLayout> layout;
  v1::BufferMetadata metadata;
  uid_t owner_uid = 0;
  uint64_t owner_session = 0;  // set by Add
  // The owner's client (policy rule) name, and its quota key "rule/uid".
  std::string owner_client;
  std::string charged_to;
  // The daemon's read-write fd; views are opened from it.
  UniqueFd fd;
  // The read-only view every read-only holder is sent, on a backend that
  // SharesReadViews: opened at the first such delivery by Registry::ReadView
  // (under its lock), then fixed; closed before `fd` is followed.
  mutable UniqueFd read_view;
  // session id → that session's rights: the widest of its routes.
  absl::flat_hash_map<uint64_t, CpuAccess> holders;
  absl::flat_hash_set<uint64_t> grants;
  // Routes by which sessions hold it, on a backend with live revoke (see
  // Registry::Revoke): the owner's own (while it holds), and per importing
  // session, per grant imported, its rights and the views delivered.
  CpuAccess owner_access = CpuAccess::kNone;
  bool owner_holds = false;
  struct Route {
    CpuAccess access = CpuAccess::kNone;
    std::vector<uint64_t> views;
  };
  absl::flat_hash_map<uint64_t, absl::flat_hash_map<uint64_t, Route>> imports;
  // Per grant, the views delivered through it to sessions that have let
  // go of the buffer since (Release, or their end): their fds may live on
  // in processes, so a live revoke of the grant still cuts them off.
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> let_go_views;
  // Per importing session (any backend), the grants it imported this
  // buffer through and the rights each import was judged to give (the
  // widest, if several), noted at Import itself: a Share racing the
  // import's delivery already knows where its granter's hold came from,
  // and a revoke without live revoke knows what the others still give. A
  // revoked grant leaves every such map.
  absl::flat_hash_map<uint64_t, absl::flat_hash_map<uint64_t, CpuAccess>> imported_via;
  // Imports delivered of it so far (SettleImport; BufferInfo.imports_total,
  // for the owner).
  uint64_t imports_total = 0;
  // Set by the allocator (its decision and the backend say so): once
  // nobody holds it, the buffer stays charged until no fd or mapping of
  // it is left anywhere (Registry: "Released memory").
  bool charge_until_gone = false;

  // On a backend with live revoke: the rights `session_id`'s holds justify,
  // the widest of its own hold (as owner) and its import routes.
  CpuAccess JustifiedRights(uint64_t session_id) const;

  BufferRecord() = default;
  BufferRecord(const BufferRecord&) = delete;
  BufferRecord& operator=(const BufferRecord&) = delete;
  // Closes `fd`; first, when the registry dropped it still charged, has
  // `gone_watch` follow its memory (token: `id`; group: the uid charged_to names).
  ~BufferRecord();
  std::shared_ptr<LastReferenceFollower> gone_watch;  // set by the registry
};

// An open grant. `view` is what the allocator decided at Share (decide.h's
// GrantView: peer, granter, rights); its id and buffer_id are the registry's.
struct GrantRecord {
  std::string token;  // empty once its session ended (see `via`)
  uint64_t from_session = 0;
  // The uid the granting session is charged as (Identity::charged_uid: a
  // user namespace's owner for any of its uids): grants count per it.
  uid_t charged_uid = 0;
  GrantView view;
  // Where the granter's own hold came from when it shared: its owner's
  // hold (`rooted`), else the grants it had imported the buffer through
  // (BufferRecord::imported_via), each with the rights that route gave. Each
  // revoke (live or not) of one of those takes it out of `via`; once none is left,
  // or those left do not give the rights this grant gives, this grant is
  // revoked too (Registry::Revoke), whether or not the granter still
  // holds or its session still lives, and however many revokes it took:
  // such a grant outlives its session (token gone, so never imported
  // again) while anyone imported through it, until revoked or its buffer
  // goes.
  bool rooted = false;
  absl::flat_hash_map<uint64_t, CpuAccess> via;
  // The other way, so that a revoke (or an end) walks only what it reaches
  // (it used to rescan the buffer's grants and importers for each grant
  // it took, under the lock: 4,096 onward grants took 81 ms): the
  // sessions that imported the buffer through this grant (those whose
  // BufferRecord::imports or ::imported_via name it, and perhaps some that
  // no longer do; each leaves at its DropHold), and the grants shared on
  // whose `via` names this one.
  absl::flat_hash_set<uint64_t> importers;
  absl::flat_hash_set<uint64_t> onward;
};

class Registry {
 public:
  // Open grants one session may have made (each ~800 bytes of hallocd's
  // memory, and Share is cheap to repeat): a compositor or camera shares a
  // few per buffer it hands on.
  static constexpr size_t kMaxGrantsPerSession = 1024;
  // Grants one uid may have open of buffers its sessions imported
  // (`GrantRecord::rooted` false), its ended sessions' included: those stay
  // while imported (a revoke upstream must reach them), so a uid could
  // otherwise pile them up by reconnecting.
  static constexpr size_t kMaxOnwardGrantsPerUid = 4096;
  // Grants one uid may have open in all (its sessions' and the onward ones
  // above): without it, the bound was kMaxGrantsPerSession times the
  // sessions a uid may open (256 by default), some 262,000 grants and
  // 220 MiB of hallocd's memory charged to nobody.
  static constexpr size_t kMaxGrantsPerUid = 16384;
  // Times one session may import the same grant on a backend with live
  // revoke (each import is a kernel view whose id the route keeps until
  // the grant or the hold goes), times a grant's imports may be let go
  // of (their ids are kept for a revoke of the grant: BufferRecord::
  // let_go_views).
  static constexpr size_t kMaxImportsPerGrant = 256;
  // Views all sessions' imports of one grant keep at once: its revoke makes
  // one ioctl per view (zapping each mapping of it), on the revoke lane
  // every uid shares; without it, a uid's many sessions could make one
  // revoke last seconds.
  static constexpr size_t kMaxViewsPerGrant = 4096;
  // Grants one session may hold one buffer through at once (imported and
  // not revoked yet): each grant it shares the buffer on with keeps them all (for
  // a revoke of any: GrantRecord::via), so without a bound a few sessions
  // importing a thousand grants each and sharing on made hallocd keep
  // millions of entries (330 MB, measured), charged to nobody.
  static constexpr size_t kMaxGrantsPerImport = 16;
  // The most buffers a revoke took that a session remembers (fewer if it
  // may hold fewer): a late Release naming an older one is NOT_FOUND. They
  // count against no room, and importers that never release would make
  // hallocd keep ~50 B per revoked import, per session, charged to nobody
  // (12 MB a session at the default hold limit).
  static constexpr size_t kMostRevokedRemembered = 1024;
  // Holds one uid's sessions may have made by importing (of buffers they
  // do not own), all together: each is ~290 B of hallocd (the buffer's
  // holders and routes, the session's set, the references), and a session
  // may hold 2^18 buffers, a uid open 256 sessions, so importing every
  // buffer it owns into each of them made some 16.8 million (4.5 GiB)
  // under the default policy, charged to nobody. SetMaxImportHoldsPerUid
  // (tests) may lower it.
  static constexpr uint64_t kMaxImportHoldsPerUid = uint64_t{1} << 18;

  // `backend` names the backend in BufferInfo, `dma_bufs` says whether its
  // fds are dma-bufs (else memfds: BufferInfo.fd_kind). `follower` follows
  // released memory still charged; nullptr: a LastReferenceWatch (memfds).
  Registry(std::string backend, bool dma_bufs, uint64_t max_buffers_per_session,
           std::shared_ptr<LastReferenceFollower> follower = nullptr);

  // Sessions. Join before the session's first request; Leave drops its
  // holds (freeing buffers nobody else holds) and its grants.
  void Join(uint64_t session_id, const Identity& creds);
  void Leave(uint64_t session_id);

  // The most buffers hallocd holds at once, live or released and still
  // charged (each was an fd in it), a live buffer's read view (ReadView)
  // counting as one more: past it CheckRoom, Add and ReadView refuse with
  // RESOURCE_EXHAUSTED, whoever asks. 0: no limit (the default).
  void SetMaxBuffers(uint64_t max_buffers);
  // Tests: another bound than kMaxImportHoldsPerUid.
  void SetMaxImportHoldsPerUid(uint64_t n) {
    absl::MutexLock lock(&mu_);
    max_import_holds_per_uid_ = n;
  }

  // Judges the quota key's current charge (buffers, bytes) against a new
  // allocation; called under the registry's lock.
  using QuotaJudge =
      absl::FunctionRef<absl::Status(uint64_t buffers, uint64_t bytes)>;
  // Whether `session_id` may take `count` more buffers: its own limit,
  // hallocd's (SetMaxBuffers), then `quota` on `quota_key`'s charge.
  // Nothing changes. When either of the last two refuses while released
  // memory is charged, that is settled first and,
  // with `may_wait`, after waiting for the reaper to close what it has
  // queued (pages being freed: not on a thread others wait for). Without
  // `may_wait` such a refusal carries payload kWaitForReleasedMemory: the
  // caller may ask again where it may wait.
  static constexpr absl::string_view kWaitForReleasedMemory =
      "halloc.dev/wait-for-released-memory";

  // Room set aside by CheckRoom for buffers being made, in hallocd's limit
  // and on the quota key's charge (their count and bytes), so that calls
  // racing each other can neither open more fds than the limit nor commit
  // more memory than a quota between their check and their Add (each
  // would otherwise see the others' buffers as not there yet and commit
  // its own: 32 calls at once, 32 quotas of memory). Add takes it;
  // destroyed before that (the call failed), it is given back. Move-only;
  // must not outlive its registry.
  class Reservation {
   public:
    // (Members initialized here, not in their declarations: a default
    // argument of Add's needs this constructor inside Registry.)
    Reservation() : registry_(nullptr), count_(0), bytes_(0) {}
    Reservation(Reservation&& other) noexcept
        : registry_(std::exchange(other.registry_, nullptr)),
          count_(std::exchange(other.count_, 0)),
          quota_key_(std::move(other.quota_key_)),
          bytes_(std::exchange(other.bytes_, 0)) {}
    Reservation& operator=(Reservation&& other) noexcept;
    ~Reservation() { GiveBack(); }
    uint32_t count() const { return count_; }
    uint64_t bytes() const { return bytes_; }

   private:
    friend class Registry;
    Reservation(Registry* registry, uint32_t count, std::string quota_key, uint64_t bytes)
        : registry_(registry), count_(count), quota_key_(std::move(quota_key)),
          bytes_(bytes) {}
    void GiveBack();
    Registry* registry_;
    uint32_t count_;
    std::string quota_key_;
    uint64_t bytes_;
  };
  // With `reservation`, OK also sets `count` buffers of `bytes` in all
  // aside in it (without, this is a check only). Quotas are judged on
  // what is charged plus what other calls have set aside.
  absl::Status CheckRoom(uint64_t session_id, uint32_t count,
                         const std::string& quota_key, QuotaJudge quota,
                         bool may_wait = true, Reservation* reservation = nullptr,
                         uint64_t bytes = 0);
  // Takes `reservation` (what CheckRoom set aside for these), checks room
  // again and adds `fresh` (each charged to its charged_to) held by
  // `session_id` with `access`, assigning ids; appends each one's info to
  // `reply`. All or nothing; UNAUTHENTICATED once the session left.
  absl::Status Add(uint64_t session_id,
                   absl::Span<const std::shared_ptr<BufferRecord>> fresh,
                   CpuAccess access, QuotaJudge quota,
                   v1::AllocateResponse* reply, Reservation reservation = Reservation());
  // Drops `session_id`'s hold on each of `ids`. All or nothing: NOT_FOUND
  // (and nothing dropped) if one is not held. One a revoke took from the
  // session counts as released already (the client could not have known),
  // once: so a batch that names it releases the others. With
  // `import_references`, each id gives back one reference an import made
  // instead (an id may repeat, a reference each): the hold goes with its
  // last (see Import). `generations` (with `import_references` only, one
  // per id, else INVALID_ARGUMENT) names the hold each reference is on
  // (Imported::generation): one on a hold gone since is given back
  // already, and its id is done (not NOT_FOUND); 0: any hold.
  absl::Status Release(uint64_t session_id, absl::Span<const uint64_t> ids,
                       bool import_references = false, absl::Span<const uint64_t> generations = {});

  // Opens a grant on `buffer_id` held by `session_id`. `judge` sees the
  // sharer's own rights and returns the grant's terms (its id and buffer_id
  // are filled in here), or why not: it is called once the buffer is
  // found held, before the grant limits (a refusal of the policy's, which
  // no retry mends, comes first). RESOURCE_EXHAUSTED past
  // kMaxGrantsPerSession open grants; FAILED_PRECONDITION for a session
  // that holds it only through grants revoked since (live revoke).
  using ShareJudge =
      absl::FunctionRef<absl::StatusOr<GrantView>(CpuAccess held)>;
  absl::StatusOr<v1::Grant> Share(uint64_t session_id, uint64_t buffer_id,
                                  ShareJudge judge);
  // Makes `session_id` a holder of the buffer `token` grants, with the
  // rights `judge` returns for that grant. A session that already holds the
  // buffer keeps the wider of its two rights. Each import is one reference
  // on the session's hold (as gralloc's importBuffer is one freeBuffer
  // owed): a hold made by an allocation or import has one, each import
  // while it holds adds one, each given back (Release with
  // import_references) or undone (SettleImport) takes one, and the hold
  // goes with the last, or whole with a plain Release. So a client gives
  // back an import it did not keep without knowing what else is in flight.
  // RESOURCE_EXHAUSTED once it imported this grant kMaxImportsPerGrant
  // times (while it holds), or imports of it were let go of that many
  // times, or the holds its uid made by importing reach
  // kMaxImportHoldsPerUid.
  struct Imported {
    std::shared_ptr<const BufferRecord> buffer;
    v1::BufferInfo info;  // cpu_access: what this import grants
    bool newly_held = false;
    uint64_t grant_id = 0;
    // The session's rights before this import widened them (it held the
    // buffer already, with less): for UndoWidening if delivery fails.
    std::optional<CpuAccess> widened_from;
    // The hold this import's reference is on, by its generation (each hold
    // a session makes of a buffer has its own, never used again): the
    // caller says how the import's delivery went with SettleImport, and
    // the client names it when it gives the reference back (Release).
    uint64_t generation = 0;
  };
  using ImportJudge =
      absl::FunctionRef<absl::StatusOr<CpuAccess>(const GrantView& grant)>;
  absl::StatusOr<Imported> Import(uint64_t session_id, absl::string_view token,
                                  ImportJudge judge);
  // An import that widened `session_id`'s rights on `buffer_id` to
  // `widened_to` (from `imported.widened_from`) did not reach the client:
  // its rights go back to what its holds justify (its routes and own hold
  // on a backend with live revoke, else what they were), unless something
  // else changed them meanwhile.
  void UndoWidening(uint64_t session_id, uint64_t buffer_id, CpuAccess widened_to,
                    CpuAccess widened_from);
  // How the delivery of an import went: one not delivered takes back its
  // reference (the hold goes with its last: a failed import does not take
  // away a hold a concurrent one delivered). Nothing happens when the hold
  // `generation` names went meanwhile (a Release, a revoke, the end).
  void SettleImport(uint64_t session_id, uint64_t buffer_id, uint64_t generation, bool delivered);
  // View `view_id`, noted by AddImportView, never reached the client: it no
  // longer counts as a route of `session_id` (one left with no views goes).
  void DropImportView(uint64_t session_id, uint64_t grant_id, uint64_t buffer_id,
                      uint64_t view_id);
  // Records that `session_id`, importing grant `grant_id` with `access`,
  // is being handed live-revocable view `view_id` of `buffer_id`. NOT_FOUND
  // when the grant was revoked (or the hold dropped) since Import: the
  // caller must then cut the view off instead of delivering it.
  absl::Status AddImportView(uint64_t session_id, uint64_t grant_id,
                             uint64_t buffer_id, CpuAccess access,
                             uint64_t view_id);
  // Withdraws grant `grant_id` (NOT_FOUND unless `session_id` opened it):
  // no new import of it succeeds, and an importing session that held the
  // buffer by no other grant stops holding it (one that still does keeps
  // the widest rights of those left). With `live`, every route imported
  // through it is cut too: the views delivered are returned for the
  // backend to revoke. Without, the fds stay valid in their processes but
  // hallocd's holds go all the same: a revoked importer can no longer
  // share the buffer on, nor keep its owner's charge up by a hold (an fd
  // it kept is followed as released memory, under a quota). Grants shared
  // on from what the revoke cut off go the same way, and so on down: those
  // a cut-off session made of the buffer, and those whose every route
  // (GrantRecord::via) was revoked; so a session cannot keep a revoked
  // buffer by granting it to itself (or a friend) first.
  struct Revoked {
    std::shared_ptr<const BufferRecord> buffer;  // keeps its fd open
    std::vector<uint64_t> views;
  };
  absl::StatusOr<Revoked> Revoke(uint64_t session_id, uint64_t grant_id,
                                 bool live);

  // Changes one metadata field; the owner's fields need read-write rights.
  absl::StatusOr<v1::BufferInfo> SetMetadata(uint64_t session_id,
                                             const v1::SetMetadataRequest& req);

  // Listings, as `session_id` sees them.
  absl::StatusOr<v1::BufferInfo> Describe(uint64_t session_id,
                                          uint64_t buffer_id) const;
  // One page: at most `page_size` buffers with ids above `after`, by id;
  // next_page_token is set when more follow.
  v1::ListResponse List(uint64_t session_id, bool all, uint64_t after = 0,
                        size_t page_size = std::numeric_limits<size_t>::max()) const;
  // Counters into `stats` (live buffers/bytes, released memory still
  // charged, grants, totals, per-client rows, the backend row); with
  // `only_uid`, the per-client rows of that uid alone.
  void FillStats(v1::StatsResponse* stats, std::optional<uid_t> only_uid = std::nullopt);
  // One page of sessions' holdings, then clients' charges: at most
  // `page_size` rows past `page_token` (a DumpResponse's next_page_token,
  // or "" for the first page; a malformed one is INVALID_ARGUMENT).
  // Client names and quotas are the policy's, filled in by the caller.
  absl::Status FillDump(v1::DumpResponse* dump, absl::string_view page_token = "",
                        size_t page_size = std::numeric_limits<size_t>::max());

  // Returns once every buffer dropped so far has had its fd closed.
  void FlushReaper() { reaper_.Flush(); }
  // The read-only view of `buffer` every read-only holder of it is sent
  // (Backend::SharesReadViews, BufferRecord::read_view): opened by `open`
  // at the first such delivery and kept while the buffer lives, counted in
  // hallocd's limit (SetMaxBuffers) as a buffer is. Returns a dup of it,
  // the caller's to send and close. Where it is not kept, `open`'s own
  // view, kept by no one: for a buffer no longer live (released during
  // the call), and where hallocd's limit is full (a room check passed for
  // the buffer alone, and an import takes no room: neither is refused for
  // the view).
  //
  // Holders of one view share its file offset, status flags and flock(2)
  // and OFD locks; those last while hallocd keeps it, as on the owners'
  // read-write fd, which every read-write holder shares.
  using ViewOpener = absl::FunctionRef<absl::StatusOr<UniqueFd>()>;
  absl::StatusOr<UniqueFd> ReadView(const BufferRecord& buffer, ViewOpener open);

  // Drops a caller's reference to a buffer (an Import's, a Revoke's) on the
  // reaper thread: it may be the last one, the buffer released meanwhile,
  // and closing its fd frees its pages, which a request thread should not
  // wait for.
  void DropOffThread(std::shared_ptr<const BufferRecord> buffer) {
    if (buffer != nullptr) reaper_.Add(std::move(buffer));
  }

  // How many sessions grant `grant_id`'s reverse link names as having
  // imported through it (GrantRecord::importers); 0 for no such grant.
  size_t ImporterLinksForTesting(uint64_t grant_id) const;
  // Whether the links a revoke and an end follow agree with what they link
  // (GrantRecord::importers, ::onward and ::via, Holding::grants_by_buffer
  // and ::revoked) and no grant an ended session kept is out of any
  // revoke's reach; INTERNAL naming the first that does not.
  absl::Status CheckLinksForTesting() const;

 private:
  struct Holding {
    Identity creds;
    // Ordered: a page of List starts where the last stopped, in
    // O(log n + page) under the lock every request takes; an O(n) scan
    // of a session's 2^18 held ids held it ~ms a page.
    absl::btree_set<uint64_t> buffers;
    absl::flat_hash_set<uint64_t> grants;
    // The same grants by buffer: a revoke that cuts this session off a
    // buffer revokes those it made of that buffer.
    absl::flat_hash_map<uint64_t, absl::flat_hash_set<uint64_t>> grants_by_buffer;
    // Buffers a revoke took from this session (held through revoked grants
    // only) that it has not released nor imported again since: a Release naming one is done
    // already (Release), and Describe and the like say why it is not held.
    // The last kMostRevokedRemembered taken (fewer if the session may hold
    // fewer) are remembered: by buffer, the serial of the revoke that took
    // it, and by serial, oldest first.
    absl::flat_hash_map<uint64_t, uint64_t> revoked;
    absl::btree_map<uint64_t, uint64_t> revoked_in_order;
    void RememberRevoked(uint64_t buffer_id, uint64_t serial, size_t most);
    // Whether `buffer_id` was remembered (it is forgotten now).
    bool ForgetRevoked(uint64_t buffer_id);
  };

  // Which holders an Info lists: none; all, shown as `session_id` may see
  // them (v1::Holder: an importer sees its own entry only); all, in full.
  enum class Holders { kNone, kAsSeenByCaller, kAll };
  v1::BufferInfo Info(const BufferRecord& buffer, uint64_t session_id, Holders holders) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // SessionRoom, then SharedRoomLocked.
  absl::Status CheckRoomLocked(const Holding& holding, uint32_t count,
                               const std::string& quota_key, QuotaJudge quota)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SessionRoom(const Holding& holding, uint32_t count) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Whether `session_id` may import grant `grant_id` of `buffer` once more:
  // kMaxImportsPerGrant (its own, and let go of), kMaxViewsPerGrant (all
  // sessions'), kMaxGrantsPerImport.
  absl::Status ImportRoom(uint64_t session_id, uint64_t grant_id, const BufferRecord& buffer) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // hallocd's limit, then `quota`; both again after settling released
  // memory, should either refuse.
  absl::Status SharedRoomLocked(uint32_t count, const std::string& quota_key,
                                QuotaJudge quota) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DaemonRoom(uint32_t count) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status JudgeLocked(const std::string& quota_key, QuotaJudge quota) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void UnchargeLocked(const std::string& quota_key, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What `r` set aside goes (given back, or taken by Add); `r` is empty.
  void UnreserveLocked(Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns the charges of released memory that is gone by now (of what
  // the reaper has closed so far: callers flush it first, outside mu_).
  void SettleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The holding's buffer `id`, or NOT_FOUND.
  absl::StatusOr<BufferRecord*> Held(const Holding& holding, uint64_t id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Drops one hold; frees the buffer when it was the last.
  void DropHold(uint64_t session_id, Holding& holding, uint64_t buffer_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropGrant(uint64_t grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops those of `grants` that an ended session kept and no revoke can
  // reach any more (RevocableStill), then those shared on through them
  // that this leaves unreachable, and so on.
  void DropUnrevocable(std::vector<uint64_t> grants) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether anyone is within a revoke's reach through `grant`: something
  // was shared on through it, or someone imported the buffer through it
  // and holds by it (without live revoke, a hold a revoke ends), or has or
  // let go of views it delivered (live revoke: fds a revoke cuts off).
  // `leaving`: a session whose holds are about to go (its views may
  // outlive it in its process; its holds do not).
  bool Reaches(const GrantRecord& grant, std::optional<uint64_t> leaving = std::nullopt) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Drops each of `grants` that an ended session kept (no token) and that
  // reaches nobody any more (Reaches), and those of recheck_, until none
  // is left to look at.
  void DropUnreaching(std::vector<uint64_t> grants) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a revoke could still reach `grant` (not rooted): some grant it
  // came through is still open (those of ended sessions are dropped).
  bool RevocableStill(const GrantRecord& grant) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const std::string backend_;
  const v1::FdKind fd_kind_;
  const uint64_t max_buffers_per_session_;

  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t max_buffers_ ABSL_GUARDED_BY(mu_) = 0;
  // Live buffers' read views (ReadView): fds in hallocd's limit too.
  uint64_t read_views_ ABSL_GUARDED_BY(mu_) = 0;
  // Room CheckRoom gave calls that have not reached Add yet (Reservation):
  // in hallocd's limit, and per quota key (buffers, bytes).
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>> reserved_charge_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Holding> holdings_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<BufferRecord>> buffers_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, GrantRecord> grants_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> grant_tokens_ ABSL_GUARDED_BY(mu_);
  // Per uid, its open grants (kMaxGrantsPerUid) and of them those that are
  // not `rooted` (kMaxOnwardGrantsPerUid).
  struct UidGrants {
    uint64_t open = 0;
    uint64_t onward = 0;
  };
  absl::flat_hash_map<uid_t, UidGrants> uid_grants_ ABSL_GUARDED_BY(mu_);
  // Per uid charged, the holds its sessions made by importing a buffer
  // they do not own (kMaxImportHoldsPerUid); made in Import, gone in
  // DropHold.
  absl::flat_hash_map<uid_t, uint64_t> import_holds_ ABSL_GUARDED_BY(mu_);
  uint64_t max_import_holds_per_uid_ ABSL_GUARDED_BY(mu_) = kMaxImportHoldsPerUid;
  // The references of each hold an import reached, by (session, buffer),
  // from that import until the hold goes (DropHold); a hold without an
  // entry (an allocation's, never imported) has one reference. See Import
  // and SettleImport.
  struct ImportRefs {
    // The hold's generation (Imported::generation): a settle or give-back
    // naming another is of a hold gone since.
    uint64_t generation = 0;
    uint64_t refs = 0;  // references, those of imports under way included
  };
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, ImportRefs> import_refs_ ABSL_GUARDED_BY(mu_);
  // Takes one reference off `session_id`'s hold on `buffer_id`, if that
  // hold is of `generation` (0: any); drops the hold with its last.
  void DropReference(uint64_t session_id, Holding& holding, uint64_t buffer_id,
                     uint64_t generation = 0) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_revoke_ ABSL_GUARDED_BY(mu_) = 1;  // Holding::revoked's serials
  uint64_t live_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Quota use per client: "rule/uid" → (buffers, bytes) owned.
  absl::flat_hash_map<std::string, std::pair<uint64_t, uint64_t>> charged_
      ABSL_GUARDED_BY(mu_);
  // Allocations per "rule/uid" since it last owned nothing (an entry goes
  // with its charge: one per client and uid that owns buffers now).
  absl::flat_hash_map<std::string, uint64_t> allocated_ ABSL_GUARDED_BY(mu_);
  uint64_t allocations_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t releases_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t grants_revoked_total_ ABSL_GUARDED_BY(mu_) = 0;
  // Released memory still charged, by buffer id (the watch's token).
  struct Lingering {
    std::string charged_to;
    uint64_t size = 0;
  };
  absl::flat_hash_map<uint64_t, Lingering> lingering_ ABSL_GUARDED_BY(mu_);
  uint64_t lingering_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Settle on the way once this many linger (see DropHold).
  static constexpr size_t kSettleEvery = 256;
  size_t settle_at_ ABSL_GUARDED_BY(mu_) = kSettleEvery;
  const std::shared_ptr<LastReferenceFollower> gone_watch_;
  // Kept grants (no token) whose last onward grant DropGrant dropped: each
  // may reach no one now (DropUnreaching looks at them).
  std::vector<uint64_t> recheck_ ABSL_GUARDED_BY(mu_);

  // Dropped buffers are closed here, off the request path and outside mu_
  // (closing the last fd of a large buffer frees its pages).
  Reaper reaper_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_REGISTRY_H_
