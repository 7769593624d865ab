// A Client's connection (libhalloc's own; not installed): its broker socket
// and gRPC stub, and the one reader at a time that files what comes on the
// socket (replies, and the fds gRPC calls sent ahead of theirs) for every
// call waiting on it. client.cc builds the public calls on it.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_CLIENT_IMPL_H_
#define HALLOC_CLIENTS_CPP_HALLOC_CLIENT_IMPL_H_

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {

// A gRPC status as an absl one, its message prefixed with `method`.
absl::Status FromGrpc(const grpc::Status& s, absl::string_view method);

class Client::Impl {
 public:
  Impl(BrokerConnection conn, std::shared_ptr<grpc::Channel> channel,
       const ConnectOptions& options);
  // Ends the session, even where a child forked since holds a copy of the
  // broker socket (hallocd sees a connection end only when its last copy
  // closes). In such a child it ends nothing, and leaves the gRPC stub and
  // channel made before the fork alone (gRPC's threads are the parent's).
  ~Impl();

  // One unary call with our session token and deadline (the timeout, or
  // `by` when sooner: a page of a paged call); errors name `rpc`.
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (v1::Allocator::Stub::*method)(grpc::ClientContext*,
                                                                        const Req&, Resp*),
                            const Req& req, absl::string_view rpc,
                            absl::Time by = absl::InfiniteFuture()) {
    RETURN_IF_ERROR(Usable(rpc));
    Resp resp;
    auto ctx = Context(by);
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
  absl::Status ReleaseMany(absl::Span<const uint64_t> ids);

  // One request on the broker socket and its reply (with the fds that came
  // in the same record). Errors name `rpc`.
  absl::StatusOr<Reply> BrokerCall(v1::BrokerRequest req, absl::string_view rpc);

  // A call id for ImportRequest.call_id and AllocateRequest.call_id: unique
  // on this connection, like the broker's request ids (it comes from the
  // same counter).
  uint64_t NextCallId() { return next_request_id_.fetch_add(1, std::memory_order_relaxed); }

  // What goes back to hallocd with the fds of a call that gave up.
  enum class GiveBackWith {
    kNothing,     // (its caller gives back what it must itself)
    kBuffers,     // an Allocate's: the buffers
    kReferences,  // an Import's: the reference each fd is (hallocd sends
                  // none once it sees the call gave up)
  };
  // The gRPC call `call_id` gave up: its fds, should they come (or have
  // come), are closed at once instead of waiting for a taker, and `what`
  // goes back with them.
  void AbandonCall(uint64_t call_id, GiveBackWith what);

  // The Buffer a gRPC call's reply described, with the fd it sent ahead
  // (TakeFd), waited for until `deadline` (the call's).
  absl::StatusOr<Buffer> Receive(v1::BufferInfo info, uint64_t call_id, absl::Time deadline);

  // A gRPC Import (`call_id`, 0 where hallocd echoes none) is in flight:
  // should its fd be cut on the way, its buffer is not given back whole
  // (the session may hold it by other references; its caller gives back
  // the import's own: GiveBackReference). FAILED_PRECONDITION in a forked
  // child (asked before the lock, which a thread of the parent may have
  // held at the fork, for good): then it has not begun.
  absl::Status ImportBegins(uint64_t call_id);
  void ImportEnds(uint64_t call_id);
  // An import of `buffer_id` that hallocd delivered reached no caller:
  // gives back the one reference it is on the session's hold
  // (ReleaseRequest.import_references), where hallocd counts them; an
  // older one's hold stays until the session ends (its Release would drop
  // the whole hold, which another import may rely on). `hold_generation`
  // (the import's, ImportResponse.hold_generation) names that hold, where
  // hallocd takes it: one dropped and made again since (a Release on
  // another thread, then another import) keeps its references.
  void GiveBackReference(uint64_t buffer_id, uint64_t hold_generation);

  const UniqueFd broker_;
  const v1::Hello hello_;
  const v1::Welcome welcome_;
  std::unique_ptr<v1::Allocator::Stub> stub_;  // leaked in a forked child
  const absl::Duration timeout_;
  const bool fast_path_;

 private:
  // Whether hallocd ended the session: its broker connection closed
  // (hallocd exited, or cut it).
  bool SessionEnded() const;
  // A context carrying our session token and the call deadline (`by` when
  // sooner).
  std::unique_ptr<grpc::ClientContext> Context(absl::Time by = absl::InfiniteFuture()) const;

  // OK while this process is the one that connected: after fork() parent
  // and child would share the socket and the request ids, and take each
  // other's replies (buffers of the wrong size, or none).
  absl::Status Usable(absl::string_view rpc) const;

  // The fd for `buffer_id` that a gRPC call (`call_id`, 0 where hallocd
  // echoes none) had sent ahead of its reply: normally queued already, and
  // read even when `deadline` (the call's) has passed; else waited for
  // until then. Records for others are kept for them.
  absl::StatusOr<UniqueFd> TakeFd(uint64_t buffer_id, uint64_t call_id, absl::Time deadline);

  // Revokes a grant without waiting for the answer (its call was
  // abandoned).
  void Withdraw(uint64_t grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // An import's reference: its buffer, and the generation of the hold it
  // is on (0: not known).
  struct Reference {
    uint64_t buffer_id;
    uint64_t hold_generation;
  };
  void GiveBackReferencesLocked(const std::vector<Reference>& refs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What AbandonCall says goes back with fds `fds` (an Import's: their
  // holds' generations; an Allocate's: their buffers).
  void GiveBackWithFds(GiveBackWith what, const std::vector<Reference>& fds)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Abandoned calls are kept to kMostAbandonedCalls.
  void ForgetAbandoned() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Gives buffers back to the daemon without waiting for its answer (used
  // when their fds were lost on the way, or their call was abandoned).
  void GiveBack(const std::vector<uint64_t>& ids) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Sends `req` under a new id whose answer is dropped when it comes; if it
  // cannot be sent, the session's end does the same.
  void SendUnanswered(v1::BrokerRequest req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Sends one request, waiting while the socket is full (a daemon not
  // reading it) until `deadline` at the most.
  absl::Status Send(const std::string& bytes, absl::Time deadline);

  // Waits until `ready()` (asked under mu_) or `deadline`. One waiter at a
  // time reads the socket, without the lock, and files what comes for
  // everyone; the others sleep until it has, or until their own deadline:
  // no call waits for another's reply, nor past its own deadline. Past it,
  // what is queued already is still read and filed (an answer that came in
  // time, not read yet) before giving up.
  absl::Status WaitFor(absl::FunctionRef<bool()> ready, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Takes one record off the broker socket, waiting until `deadline` at the
  // most: RESOURCE_EXHAUSTED when none came.
  absl::StatusOr<Record> ReceiveNext(absl::Time deadline);

  // Files what ReceiveNext got where its waiter looks.
  absl::Status FileNext(absl::StatusOr<Record> next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void File(v1::BrokerFrame& frame, std::vector<UniqueFd> fds, bool truncated)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Bounds each blocking recvmsg on the broker socket; zero if it could not
  // be set (then every wait polls first).
  static absl::Duration SetReceiveTimeout(int fd, absl::Duration d);
  const absl::Duration receive_timeout_;

  // 0 was the handshake's Verify.
  std::atomic<uint64_t> next_request_id_{1};
  const pid_t pid_;
  const uint64_t fork_generation_;
  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a waiter reads the socket now
  absl::CondVar filed_;                        // it has filed a record
  struct PendingFd {
    absl::StatusOr<UniqueFd> fd;
    absl::Time since;
    uint64_t hold_generation = 0;  // BufferFd.hold_generation (an Import's)
  };
  // By (buffer id, call id): two imports of one buffer may be in flight.
  // At most kMostPendingFds, the oldest closed past that: a daemon sending
  // fds no call claims (a buggy or foreign one) would otherwise fill this
  // process's fd table (each an fd of its own; gRPC calls in flight claim
  // a few, a batch up to 64 each).
  using FdKey = std::pair<uint64_t, uint64_t>;
  static constexpr size_t kMostPendingFds = 1024;
  absl::flat_hash_map<FdKey, PendingFd> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, absl::StatusOr<Reply>> replies_ ABSL_GUARDED_BY(mu_);
  // Requests whose caller stopped waiting (or that nobody waits for), and
  // since when (hallocd answers every request: each goes with its reply).
  absl::flat_hash_map<uint64_t, absl::Time> abandoned_ ABSL_GUARDED_BY(mu_);
  // Calls that gave up before their fds came (AbandonCall): what goes back
  // with them, and since when (a refused call's fds never
  // come: past kMostAbandonedCalls the oldest are forgotten).
  static constexpr size_t kMostAbandonedCalls = 1024;
  struct AbandonedCall {
    GiveBackWith what;
    absl::Time since;
  };
  absl::flat_hash_map<uint64_t, AbandonedCall> abandoned_calls_ ABSL_GUARDED_BY(mu_);
  // Call ids of gRPC Imports in flight (given up or not; those without a
  // call id counted apart): a cut record of their fds gives nothing back.
  absl::flat_hash_set<uint64_t> imports_in_flight_ ABSL_GUARDED_BY(mu_);
  int imports_without_call_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Request ids whose broker call waits for its reply now.
  absl::flat_hash_set<uint64_t> waiting_ ABSL_GUARDED_BY(mu_);
};

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_CLIENT_IMPL_H_
