// Unit tests of the allocator core's Share and Import (fixture:
// allocator_testing.h): who may share and import what, with which rights,
// and what a failed delivery leaves behind.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/allocator.h"
#include "service/allocator_testing.h"
#include "service/backend/memfd_backend.h"
#include "service/policy/decide.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

TEST_F(AllocatorTest, OtherSessionsBuffersAreNotFound) {
  Peer a = Open(1000), b = Open(1000);
  auto r = core_.Allocate(*a.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  const uint64_t id = r->buffers(0).id();
  EXPECT_EQ(core_.Describe(*b.session, id).status().code(), StatusCode::kNotFound);
  v1::ReleaseRequest rel;
  rel.add_buffer_ids(id);
  EXPECT_EQ(core_.Release(*b.session, rel).code(), StatusCode::kNotFound);
  v1::ShareRequest share;
  share.set_buffer_id(id);
  share.mutable_peer()->set_uid(1000);
  EXPECT_EQ(core_.Share(*b.session, share).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(core_.Stats().live_buffers(), 1u);
}

// A channel that keeps each Import's answer (as the broker's reply record
// carries it) and closes nothing but its own dups of the fds.
class AnswerKeeper : public FdChannel {
 public:
  absl::Status Send(const v1::BufferFds&, absl::Span<const int>,
                    const v1::AllocateResponse*) override {
    return absl::OkStatus();
  }
  absl::Status SendImport(const v1::BufferFds&, int, const v1::ImportResponse& reply) override {
    answers.push_back(reply);
    return absl::OkStatus();
  }
  std::vector<v1::ImportResponse> answers;
};

// An Import's answer says whether it made the session a holder
// (ImportResponse.newly_held): a client that gave the call up gives such a
// hold back, and only such a one (broker.proto).
TEST_F(AllocatorTest, AnImportSaysWhetherItMadeTheSessionAHolder) {
  Peer owner = Open(1000), peer = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  ReadFd(owner);
  const uint64_t id = r->buffers(0).id();
  absl::StatusOr<v1::Grant> first = Share(owner, id, 1000);
  absl::StatusOr<v1::Grant> second = Share(owner, id, 1000);
  ASSERT_TRUE(first.ok() && second.ok());
  AnswerKeeper channel;
  const Identity& me = peer.session->creds();
  ASSERT_TRUE(core_.Import(*peer.session, me, first->token(), 0, channel).ok());
  ASSERT_TRUE(core_.Import(*peer.session, me, second->token(), 0, channel).ok());
  ASSERT_TRUE(core_.Import(*peer.session, me, first->token(), 0, channel).ok());
  ASSERT_EQ(channel.answers.size(), 3u);
  EXPECT_TRUE(channel.answers[0].newly_held());
  EXPECT_FALSE(channel.answers[1].newly_held()) << "it held the buffer already";
  EXPECT_FALSE(channel.answers[2].newly_held());
  for (const v1::ImportResponse& a : channel.answers) EXPECT_EQ(a.buffer().id(), id);
  // The owner's own grant back to itself makes no new holder either.
  ASSERT_TRUE(
      core_.Import(*owner.session, owner.session->creds(), first->token(), 0, channel).ok());
  EXPECT_FALSE(channel.answers.back().newly_held()) << "the owner holds what it allocated";
  // Once let go, the next import makes it a holder again.
  v1::ReleaseRequest release;
  release.add_buffer_ids(id);
  ASSERT_TRUE(core_.Release(*peer.session, release).ok());
  ASSERT_TRUE(core_.Import(*peer.session, me, second->token(), 0, channel).ok());
  EXPECT_TRUE(channel.answers.back().newly_held());
}

// A channel whose Send fails (the client's socket full or gone) after
// running `during` (a racer speaking for the same session meanwhile).
class SendFailsAfter : public FdChannel {
 public:
  explicit SendFailsAfter(std::function<void(const v1::BufferFds&)> during)
      : during_(std::move(during)) {}
  absl::Status Send(const v1::BufferFds& info, absl::Span<const int>,
                    const v1::AllocateResponse*) override {
    during_(info);
    return absl::UnavailableError("the client went away");
  }

 private:
  const std::function<void(const v1::BufferFds&)> during_;
};

// An Allocate whose fds cannot be delivered gives back every buffer it
// made, even one another holder of the session's socket released first
// (ids are guessable): the all-or-nothing undo kept all the others, never
// delivered, until the session ended.
TEST_F(AllocatorTest, AnUndeliveredAllocateGivesBackEveryBufferThoughOneWasReleasedMeanwhile) {
  Peer p = Open();
  SendFailsAfter channel([&](const v1::BufferFds& info) {
    v1::ReleaseRequest release;
    release.add_buffer_ids(info.buffers(0).buffer_id());
    EXPECT_TRUE(core_.Release(*p.session, release).ok());
  });
  auto r = core_.Allocate(*p.session, p.session->creds(), Blob(4096, 3), channel);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(core_.Stats().live_buffers(), 0u) << "undelivered buffers kept";
}

// A channel whose first Send waits until let go and then fails (as when
// the client's socket is full or gone); the others go to `next`.
class FirstSendFails : public FdChannel {
 public:
  explicit FirstSendFails(std::shared_ptr<FdChannel> next) : next_(std::move(next)) {}
  absl::Status Send(const v1::BufferFds& info, absl::Span<const int> fds,
                    const v1::AllocateResponse* reply) override {
    {
      absl::MutexLock lock(&mu_);
      if (!first_waiting_) {
        first_waiting_ = true;
        mu_.Await(absl::Condition(&let_go_));
        return absl::UnavailableError("the client went away");
      }
    }
    return next_->Send(info, fds, reply);
  }
  void AwaitFirst() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&first_waiting_));
  }
  void LetGo() {
    absl::MutexLock lock(&mu_);
    let_go_ = true;
  }

 private:
  const std::shared_ptr<FdChannel> next_;
  absl::Mutex mu_;
  bool first_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool let_go_ ABSL_GUARDED_BY(mu_) = false;
};

// Two imports of one grant by one session: the first (which made it a
// holder) fails to deliver after the second delivered. The session keeps
// the hold its fd stands for.
TEST_F(AllocatorTest, AFailedImportLeavesTheHoldAConcurrentOneDelivered) {
  Peer owner = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  const uint64_t id = r->buffers(0).id();
  absl::StatusOr<v1::Grant> grant = Share(owner, id, 1000);
  ASSERT_TRUE(grant.ok()) << grant.status();

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  Peer peer;
  peer.client_end.reset(sv[1]);
  auto channel =
      std::make_shared<FirstSendFails>(std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  peer.session = *core_.OpenSession({1000, 1000, getpid(), "", std::nullopt}, channel);

  absl::Status first;
  std::thread importing([&] { first = core_.Import(*peer.session, grant->token()).status(); });
  channel->AwaitFirst();
  absl::StatusOr<v1::ImportResponse> second = core_.Import(*peer.session, grant->token());
  ASSERT_TRUE(second.ok()) << second.status();
  auto [frame, fd] = ReadFd(peer);
  EXPECT_EQ(frame.buffer_id(), id);
  channel->LetGo();
  importing.join();
  EXPECT_EQ(first.code(), StatusCode::kUnavailable);

  core_.CloseSession(owner.session->id());
  EXPECT_TRUE(core_.Describe(*peer.session, id).ok()) << "the session holds what it has an fd of";
  v1::ReleaseRequest release;
  release.add_buffer_ids(id);
  EXPECT_TRUE(core_.Release(*peer.session, release).ok());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
}

TEST_F(AllocatorTest, ShareImportKeepsBufferAliveAfterOwnerCloses) {
  Peer owner = Open(1000), peer = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  auto [frame, owner_fd] = ReadFd(owner);
  void* w = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, owner_fd.get(), 0);
  ASSERT_NE(w, MAP_FAILED);
  memcpy(w, "halloc", 6);

  absl::StatusOr<v1::Grant> grant = Share(owner, r->buffers(0).id(), 1000);
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_EQ(grant->token().size(), 32u);

  absl::StatusOr<v1::ImportResponse> got = core_.Import(*peer.session, grant->token());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->buffer().owned());
  EXPECT_EQ(got->buffer().cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_TRUE(got->newly_held()) << "the gRPC answer says so too";
  auto [pframe, peer_fd] = ReadFd(peer);
  EXPECT_EQ(fcntl(peer_fd.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_EQ(mmap(nullptr, 4096, PROT_WRITE, MAP_SHARED, peer_fd.get(), 0), MAP_FAILED);

  core_.CloseSession(owner.session->id());
  EXPECT_EQ(core_.Stats().live_buffers(), 1u);  // the peer still holds it
  EXPECT_EQ(core_.Stats().grants(), 0u);        // grants died with the owner
  EXPECT_EQ(core_.Import(*peer.session, grant->token()).status().code(), StatusCode::kNotFound);
  void* r2 = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, peer_fd.get(), 0);
  ASSERT_NE(r2, MAP_FAILED);
  EXPECT_EQ(memcmp(r2, "halloc", 6), 0);
  core_.CloseSession(peer.session->id());
  EXPECT_EQ(core_.Stats().live_buffers(), 0u);
  munmap(w, 4096);
  munmap(r2, 4096);
}

// Read-only imports of a memfd are dups of one read-only open file that
// hallocd keeps with the buffer: an import opens no new file in hallocd
// (kernel memory charged to hallocd, for as long as the client keeps the fd).
TEST_F(AllocatorTest, ReadOnlyImportsOfAMemfdShareOneOpenFile) {
  Peer owner = Open(1000), peer = Open(1000), other = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  auto [frame, owner_fd] = ReadFd(owner);
  absl::StatusOr<v1::Grant> grant = Share(owner, r->buffers(0).id(), 1000);
  ASSERT_TRUE(grant.ok()) << grant.status();
  std::vector<UniqueFd> fds;
  for (Peer* p : {&peer, &peer, &other}) {
    absl::StatusOr<v1::ImportResponse> got = core_.Import(*p->session, grant->token());
    ASSERT_TRUE(got.ok()) << got.status();
    fds.push_back(ReadFd(*p).second);
    ASSERT_EQ(fcntl(fds.back().get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  }
  // One open file: its offset moves for every holder (a dup shares it).
  ASSERT_EQ(::lseek(fds[0].get(), 100, SEEK_SET), 100);
  EXPECT_EQ(::lseek(fds[1].get(), 0, SEEK_CUR), 100) << "a second import of one session";
  EXPECT_EQ(::lseek(fds[2].get(), 0, SEEK_CUR), 100) << "another session's import";
  EXPECT_EQ(::lseek(owner_fd.get(), 0, SEEK_CUR), 0) << "the owner's read-write file is its own";
}

// A process of another uid holding a session's broker socket (the caller
// the kernel stamped) may neither pass the session's holds on nor add to
// them; one of the session's uid may, judged as itself.
TEST_F(AllocatorTest, AnotherUidMayNotShareImportRevokeOrSetMetadataAsTheSession) {
  // Every uid may share with and import from every other: only the
  // sender's uid against the session's refuses below.
  absl::StatusOr<std::shared_ptr<const Policy>> open = Policy::Parse(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE share_to: \"*\" receive_from: \"*\" }\n",
      "test");
  ASSERT_TRUE(open.ok()) << open.status();
  core_.SetPolicy(*open);
  Peer owner = Open(1000), peer = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  ReadFd(owner);
  const uint64_t id = r->buffers(0).id();
  const Identity other{1001, 1001, getpid() + 1, "", std::nullopt, std::nullopt};
  v1::ShareRequest share;
  share.set_buffer_id(id);
  share.mutable_peer()->set_uid(1001);
  absl::StatusOr<v1::Grant> refused = core_.Share(*owner.session, other, share);
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status();
  EXPECT_EQ(core_.Stats().grants(), 0u);

  // A grant for uid 1001, made by the owner's own process.
  absl::StatusOr<v1::Grant> grant = core_.Share(*owner.session, share);
  ASSERT_TRUE(grant.ok()) << grant.status();
  absl::StatusOr<v1::ImportResponse> in =
      core_.Import(*peer.session, other, grant->token(), 0, peer.session->fds());
  EXPECT_EQ(in.status().code(), StatusCode::kPermissionDenied) << in.status();
  EXPECT_EQ(ReceiveRecord(peer.client_end.get(), true).status().code(),
            StatusCode::kResourceExhausted)
      << "no fd was sent";
  // Another process of the session's uid, judged as itself.
  const Identity same_uid{1000, 1000, getpid() + 1, "", std::nullopt, std::nullopt};
  share.mutable_peer()->set_uid(1000);
  absl::StatusOr<v1::Grant> own = core_.Share(*owner.session, same_uid, share);
  ASSERT_TRUE(own.ok()) << own.status();
  in = core_.Import(*peer.session, same_uid, own->token(), 0, peer.session->fds());
  ASSERT_TRUE(in.ok()) << in.status();
  ReadFd(peer);

  // Revoke cuts other processes' imports off: not another uid's to do.
  const absl::Status not_yours = core_.Revoke(*owner.session, other, own->id());
  EXPECT_EQ(not_yours.code(), StatusCode::kPermissionDenied) << not_yours;
  EXPECT_EQ(core_.Stats().grants(), 2u);
  EXPECT_TRUE(core_.Revoke(*owner.session, same_uid, own->id()).ok());
  EXPECT_EQ(core_.Stats().grants(), 1u);

  // SetMetadata changes what every holder reads: the session's uid only.
  v1::SetMetadataRequest meta;
  meta.set_buffer_id(id);
  meta.set_type(v1::METADATA_DATASPACE);
  meta.mutable_value()->set_dataspace(281411584);
  absl::StatusOr<v1::BufferInfo> set = core_.SetMetadata(*owner.session, other, meta);
  EXPECT_EQ(set.status().code(), StatusCode::kPermissionDenied) << set.status();
  EXPECT_EQ(core_.Describe(*owner.session, id)->metadata().dataspace(), 0);
  set = core_.SetMetadata(*owner.session, same_uid, meta);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->metadata().dataspace(), 281411584);
}

TEST_F(AllocatorTest, ShareRulesDeny) {
  Peer owner = Open(1000), other_uid = Open(2000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  v1::ShareRequest share;
  share.set_buffer_id(r->buffers(0).id());
  share.mutable_peer()->set_uid(2000);
  EXPECT_EQ(core_.Share(*owner.session, share).status().code(),
            StatusCode::kPermissionDenied);  // default: same uid only
  share.mutable_peer()->set_uid(1000);
  share.set_cpu_access(v1::CPU_ACCESS_NONE);
  EXPECT_EQ(core_.Share(*owner.session, share).status().code(),
            StatusCode::kFailedPrecondition);  // memfd cannot enforce
  share.set_cpu_access(static_cast<v1::CpuAccess>(77));
  EXPECT_EQ(core_.Share(*owner.session, share).status().code(), StatusCode::kInvalidArgument);
  share.set_cpu_access(v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> grant = core_.Share(*owner.session, share);
  ASSERT_TRUE(grant.ok());
  // A session of another uid cannot take a grant made for uid 1000.
  EXPECT_EQ(core_.Import(*other_uid.session, grant->token()).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.Import(*other_uid.session, "0000").status().code(), StatusCode::kNotFound);
  // Revoke: no new imports.
  EXPECT_EQ(core_.Revoke(*other_uid.session, grant->id()).code(), StatusCode::kNotFound);
  EXPECT_TRUE(core_.Revoke(*owner.session, grant->id()).ok());
  Peer same = Open(1000);
  EXPECT_EQ(core_.Import(*same.session, grant->token()).status().code(), StatusCode::kNotFound);
}

// What is wrong with the request itself comes first, then whether the
// caller holds the buffer, then the policy: a Share of an id the caller
// does not hold is NOT_FOUND, an unknown cpu_access INVALID_ARGUMENT, even
// to a peer its rule refuses (and no denial is counted for them). The
// policy's refusal still comes before a limit's (which a retry may mend).
TEST_F(AllocatorTest, AShareIsJudgedOnlyOnceItsRequestAndBufferAreGood) {
  Peer owner = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ShareRequest share;
  share.mutable_peer()->set_uid(2000);  // default policy: same uid only
  share.set_buffer_id(r->buffers(0).id() + 1000);
  EXPECT_EQ(core_.Share(*owner.session, share).status().code(), StatusCode::kNotFound);
  share.set_buffer_id(r->buffers(0).id());
  share.set_cpu_access(static_cast<v1::CpuAccess>(99));
  absl::Status bad = core_.Share(*owner.session, share).status();
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument) << bad;
  EXPECT_EQ(core_.Stats().denials_by_rule().size(), 0u);
  share.clear_cpu_access();
  EXPECT_EQ(core_.Share(*owner.session, share).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(core_.Stats().denials_by_rule().size(), 1u);
}

// A reload takes the registry's lock (hallocd's buffer limit) and a judge
// under that lock counts its denial: the policy's lock must not be held
// into the registry's. (absl's deadlock detection, on in this build, aborts
// on the old order.)
TEST_F(AllocatorTest, AReloadAndADenialUnderTheRegistrysLockDoNotDeadlock) {
  Peer owner = Open(1000), other = Open(2000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok()) << r.status();
  auto grant = Share(owner, r->buffers(0).id(), 1000);
  ASSERT_TRUE(grant.ok()) << grant.status();
  core_.SetPolicy(Policy::Default());
  // Judged (and refused: a grant for uid 1000) under the registry's lock.
  EXPECT_EQ(core_.Import(*other.session, grant->token()).status().code(),
            StatusCode::kPermissionDenied);
  core_.SetPolicy(Policy::Default());
  EXPECT_EQ(core_.Stats().denials_by_rule().size(), 1u);
}

// A grant is judged again at each Import under the policy in force then,
// the sharer's side too: after a reload that takes the sharer's share_to
// away, a grant made before is no longer imported.
TEST(AllocatorPolicyTest, AReloadThatEndsASharersShareToStopsItsGrants) {
  auto parse = [](const std::string& camera_share_to) {
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(
        absl::StrCat("clients { name: \"camera\" match { uids: 1000 } usages: \"*\" heaps: \"*\" "
                     "max_cpu_access: CPU_ACCESS_READ_WRITE ",
                     camera_share_to,
                     " }\n"
                     "clients { name: \"viewer\" match { uids: 1001 } "
                     "max_cpu_access: CPU_ACCESS_READ receive_from: \"camera\" }\n"),
        "test");
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  };
  Allocator core(std::make_unique<MemfdBackend>(), Limits(), parse("share_to: \"viewer\""));
  std::vector<UniqueFd> client_ends;  // what the clients would read
  auto open = [&](uid_t uid) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    client_ends.emplace_back(sv[1]);
    return *core.OpenSession({uid, uid, getpid(), "", std::nullopt},
                             std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  };
  std::shared_ptr<Session> camera = open(1000), viewer = open(1001);
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  absl::StatusOr<v1::AllocateResponse> r = core.Allocate(*camera, req);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ShareRequest share;
  share.set_buffer_id(r->buffers(0).id());
  share.mutable_peer()->set_name("viewer");
  absl::StatusOr<v1::Grant> before = core.Share(*camera, share);
  absl::StatusOr<v1::Grant> kept = core.Share(*camera, share);
  ASSERT_TRUE(before.ok() && kept.ok()) << before.status() << kept.status();
  core.SetPolicy(parse(""));
  absl::Status s = core.Import(*viewer, before->token()).status();
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "share_to")) << s;
  core.SetPolicy(parse("share_to: \"viewer\""));
  EXPECT_TRUE(core.Import(*viewer, kept->token()).ok());
}

TEST_F(AllocatorTest, ReadOnlyHolderCannotShareReadWrite) {
  Peer owner = Open(1000), reader = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  auto grant = Share(owner, r->buffers(0).id(), 1000);
  ASSERT_TRUE(grant.ok());
  ASSERT_TRUE(core_.Import(*reader.session, grant->token()).ok());
  EXPECT_EQ(Share(reader, r->buffers(0).id(), 1000, v1::CPU_ACCESS_READ_WRITE).status().code(),
            StatusCode::kPermissionDenied);
}

// An import that widens what a session already holds, but never reaches
// it, leaves it the rights it had: before, the wider rights stayed (and
// let it share read-write what it can only read).
TEST_F(AllocatorTest, AnUndeliveredImportLeavesTheRightsAsTheyWere) {
  Peer owner = Open(1000), reader = Open(1000);
  auto r = core_.Allocate(*owner.session, Blob(4096));
  ASSERT_TRUE(r.ok());
  const uint64_t id = r->buffers(0).id();
  auto read = Share(owner, id, 1000);
  auto read_write = Share(owner, id, 1000, v1::CPU_ACCESS_READ_WRITE);
  ASSERT_TRUE(read.ok() && read_write.ok());
  ASSERT_TRUE(core_.Import(*reader.session, read->token()).ok());
  reader.client_end.reset();  // nothing reaches the reader from here on
  EXPECT_FALSE(core_.Import(*reader.session, read_write->token()).ok());
  absl::StatusOr<v1::BufferInfo> d = core_.Describe(*reader.session, id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_EQ(Share(reader, id, 1000, v1::CPU_ACCESS_READ_WRITE).status().code(),
            StatusCode::kPermissionDenied);
}

// A memfd backend as if hallocd ran as uid kDaemonUid (a hallocd run by a
// user): read-only binds no holder of that uid (it owns the memfd and may
// make it writable again), so it gets no read-only fd pretending otherwise.
constexpr uid_t kDaemonUid = 7;
std::unique_ptr<Backend> MemfdOfUid(uid_t owner) {
  return std::make_unique<MemfdBackend>(UdmabufSources{"/nonexistent", "", ""}, owner);
}

// An Allocate another uid sends on a session's socket is held in that
// session's name: no wider than the session's own rule lets it hold (a
// review helper's: a reader capped at read got a read-write hold from a
// writer's Allocate on its socket, and shared it on read-write), whether
// the usage asked for it or a read-only fd the backend could not make
// for that session widened it (the session's own Allocate is refused).
TEST(AllocatorPolicyTest, AnAllocateOnAnotherUidsSocketIsHeldNoWiderThanItsRuleAllows) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "writer" match { uids: 1001 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE }
    clients { name: "reader" match { uids: 1000 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  const Identity writer{1001, 1001, getpid() + 1, "", std::nullopt, std::nullopt};
  v1::AllocateRequest rw, ro, blob;
  blob.mutable_desc()->set_size(4096);
  rw = ro = blob;
  rw.mutable_desc()->set_usage(usage::kCpuReadOften | usage::kCpuWriteOften);
  ro.mutable_desc()->set_usage(usage::kCpuReadOften);
  {
    Allocator core(MemfdOfUid(0), Limits(), *policy);
    Peer reader = OpenPeer(core, 1000);
    absl::StatusOr<v1::AllocateResponse> wide =
        core.Allocate(*reader.session, writer, rw, reader.session->fds());
    EXPECT_EQ(wide.status().code(), StatusCode::kPermissionDenied) << wide.status();
    EXPECT_TRUE(absl::StrContains(wide.status().message(), "rule 'reader'")) << wide.status();
    EXPECT_EQ(DecidingRule(wide.status()), "reader");
    EXPECT_EQ(core.Stats().live_buffers(), 0u);
    // What the reader may hold, asked for by the writer: held as asked;
    // no CPU usage named: narrowed to the reader's cap, as its own would be.
    for (const v1::AllocateRequest* req : {&ro, &blob}) {
      absl::StatusOr<v1::AllocateResponse> narrow =
          core.Allocate(*reader.session, writer, *req, reader.session->fds());
      ASSERT_TRUE(narrow.ok()) << narrow.status();
      EXPECT_EQ(narrow->buffers(0).cpu_access(), v1::CPU_ACCESS_READ);
      absl::StatusOr<v1::AllocateResponse> own = core.Allocate(*reader.session, *req);
      ASSERT_TRUE(own.ok()) << own.status();
      EXPECT_EQ(own->buffers(0).cpu_access(), v1::CPU_ACCESS_READ);
    }
    EXPECT_EQ(core.Allocate(*reader.session, rw).status().code(), StatusCode::kPermissionDenied);
  }
  {
    // The reader is hallocd's own uid: no read-only fd binds it, so its
    // read-only usage is not widened past its rule's cap, whoever asks.
    Allocator core(MemfdOfUid(1000), Limits(), *policy);
    Peer reader = OpenPeer(core, 1000);
    EXPECT_EQ(core.Allocate(*reader.session, ro).status().code(), StatusCode::kFailedPrecondition);
    absl::StatusOr<v1::AllocateResponse> widened =
        core.Allocate(*reader.session, writer, ro, reader.session->fds());
    EXPECT_EQ(widened.status().code(), StatusCode::kFailedPrecondition) << widened.status();
    EXPECT_EQ(core.Stats().live_buffers(), 0u);
  }
}

// Read-only imports share one open file whatever devices the importers'
// rule lets them attach: a memfd's view carries no attach list of its own.
TEST(AllocatorPolicyTest, ReadOnlyImportsUnderAnAttachListShareOneOpenFile) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "app" match { uids: 1000 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: "vkms"
              share_to: "@same_uid" receive_from: "@same_uid" }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(MemfdOfUid(0), Limits(), *policy);
  Peer owner = OpenPeer(core, 1000), peer = OpenPeer(core, 1000);
  v1::AllocateRequest blob;
  blob.mutable_desc()->set_size(4096);
  absl::StatusOr<v1::AllocateResponse> r = core.Allocate(*owner.session, blob);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ShareRequest share;
  share.set_buffer_id(r->buffers(0).id());
  share.mutable_peer()->set_uid(1000);
  share.set_cpu_access(v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> grant = core.Share(*owner.session, share);
  ASSERT_TRUE(grant.ok()) << grant.status();
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(core.Import(*peer.session, grant->token()).ok());
    absl::StatusOr<Record> rec = ReceiveRecord(peer.client_end.get(), true);
    ASSERT_TRUE(rec.ok() && rec->fds.size() == 1) << rec.status();
    fds.push_back(std::move(rec->fds[0]));
  }
  ASSERT_EQ(::lseek(fds[0].get(), 33, SEEK_SET), 33);
  EXPECT_EQ(::lseek(fds[1].get(), 0, SEEK_CUR), 33) << "each import opened a file of its own";
}

// The session whose socket another uid's Allocate came on holds the
// buffers and pays for them, under its own rule's quota: the lender's
// quota, not a fresh one of the caller's rule on the lender's uid (two
// uids lending each other their sockets each had one quota more).
TEST(AllocatorPolicyTest, AnAllocateOnAnotherUidsSocketIsChargedToThatSessionsOwnQuota) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "lender" match { uids: 1000 } usages: "*" heaps: "*" quota_buffers: 2
              max_cpu_access: CPU_ACCESS_READ_WRITE }
    clients { name: "borrower" match { uids: 1001 } usages: "*" heaps: "*" quota_buffers: 8
              max_cpu_access: CPU_ACCESS_READ_WRITE }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(MemfdOfUid(0), Limits(), *policy);
  Peer lender = OpenPeer(core, 1000), ruleless = OpenPeer(core, 1500);
  // As the broker stamps a request on the lender's socket: the sender's
  // uid, charged as the connection is.
  Identity borrower{1001, 1001, getpid() + 1, "", std::nullopt, std::nullopt};
  borrower.account_uid = 1000;
  v1::AllocateRequest blob;
  blob.mutable_desc()->set_size(4096);
  ASSERT_TRUE(core.Allocate(*lender.session, blob).ok());
  absl::StatusOr<v1::AllocateResponse> lent =
      core.Allocate(*lender.session, borrower, blob, lender.session->fds());
  ASSERT_TRUE(lent.ok()) << lent.status();
  lent = core.Allocate(*lender.session, borrower, blob, lender.session->fds());
  EXPECT_EQ(lent.status().code(), StatusCode::kResourceExhausted) << lent.status();
  EXPECT_TRUE(absl::StrContains(lent.status().message(), "rule 'lender' quota_buffers 2"))
      << lent.status();
  v1::StatsResponse stats = core.Stats();
  ASSERT_EQ(stats.clients_size(), 1);
  EXPECT_EQ(stats.clients(0).client(), "lender");
  EXPECT_EQ(stats.clients(0).buffers(), 2u);
  // Three at once: more than the lender's whole quota, which no release
  // mends.
  v1::AllocateRequest three = blob;
  three.set_count(3);
  EXPECT_EQ(core.Allocate(*lender.session, borrower, three, lender.session->fds()).status().code(),
            StatusCode::kPermissionDenied);
  // A session no rule matches pays for nothing.
  borrower.account_uid = 1500;
  absl::StatusOr<v1::AllocateResponse> unbound =
      core.Allocate(*ruleless.session, borrower, blob, ruleless.session->fds());
  EXPECT_EQ(unbound.status().code(), StatusCode::kPermissionDenied) << unbound.status();
  EXPECT_TRUE(absl::StrContains(unbound.status().message(), "no rule matches it"))
      << unbound.status();
  EXPECT_EQ(core.Stats().live_buffers(), 2u);
}

// A read-only usage of hallocd's own uid gets a read-write fd where its
// rule allows one, and BufferInfo says so; a Share of read-only rights to
// that uid is refused, naming it; other uids are as before.
TEST(AllocatorPolicyTest, ReadOnlyIsNotHandedToHallocdsOwnUid) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "all" match { any: true } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE share_to: "*" }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(MemfdOfUid(kDaemonUid), Limits(), *policy);
  Peer daemons = OpenPeer(core, kDaemonUid), other = OpenPeer(core, 1000);
  v1::AllocateRequest ro;
  ro.mutable_desc()->set_size(4096);
  ro.mutable_desc()->set_usage(usage::kCameraOutput | usage::kCpuReadOften);
  absl::StatusOr<v1::AllocateResponse> mine = core.Allocate(*daemons.session, ro);
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->buffers(0).cpu_access(), v1::CPU_ACCESS_READ_WRITE);
  absl::StatusOr<v1::AllocateResponse> theirs = core.Allocate(*other.session, ro);
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ(theirs->buffers(0).cpu_access(), v1::CPU_ACCESS_READ);
  // Asked by another uid on the socket of a session of hallocd's uid: the
  // fds reach that session's reader, which the read-only would not bind.
  const Identity sender{1000, 1000, getpid(), "", std::nullopt};
  absl::StatusOr<v1::AllocateResponse> on_its_socket =
      core.Allocate(*daemons.session, sender, ro, daemons.session->fds());
  ASSERT_TRUE(on_its_socket.ok()) << on_its_socket.status();
  EXPECT_EQ(on_its_socket->buffers(0).cpu_access(), v1::CPU_ACCESS_READ_WRITE);
  // Nor a process of another uid in a user namespace that maps hallocd's
  // (its user's own container): privileged there, it owns the memfd too.
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd contained_end(sv[1]);
  Identity contained{100000, 100000, getpid(), "", std::nullopt};
  contained.maps_hallocd_uid = true;
  absl::StatusOr<std::shared_ptr<Session>> in_ns =
      core.OpenSession(contained, std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  ASSERT_TRUE(in_ns.ok()) << in_ns.status();
  absl::StatusOr<v1::AllocateResponse> contained_ro = core.Allocate(**in_ns, ro);
  ASSERT_TRUE(contained_ro.ok()) << contained_ro.status();
  EXPECT_EQ(contained_ro->buffers(0).cpu_access(), v1::CPU_ACCESS_READ_WRITE);

  v1::AllocateRequest rw;
  rw.mutable_desc()->set_size(4096);
  absl::StatusOr<v1::AllocateResponse> r = core.Allocate(*other.session, rw);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ShareRequest share;
  share.set_buffer_id(r->buffers(0).id());
  share.set_cpu_access(v1::CPU_ACCESS_READ);
  share.mutable_peer()->set_uid(kDaemonUid);
  absl::Status refused = core.Share(*other.session, share).status();
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "uid 7, hallocd's own")) << refused;
  share.mutable_peer()->set_uid(1001);
  EXPECT_TRUE(core.Share(*other.session, share).ok());
  share.set_cpu_access(v1::CPU_ACCESS_READ_WRITE);
  share.mutable_peer()->set_uid(kDaemonUid);
  EXPECT_TRUE(core.Share(*other.session, share).ok());
}

// Where a rule caps hallocd's own uid at read, that cap cannot be kept:
// its Allocate is refused, and so is its Import of a grant made to its
// rule's name (whose uid the Share did not know), each naming the rule.
TEST(AllocatorPolicyTest, ARuleCappingHallocdsOwnUidAtReadIsRefused) {
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(R"(
    clients { name: "camera" match { uids: 1000 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ_WRITE share_to: "viewer" }
    clients { name: "viewer" match { uids: 7 } usages: "*" heaps: "*"
              max_cpu_access: CPU_ACCESS_READ receive_from: "camera" }
  )",
                                                                       "inline");
  ASSERT_TRUE(policy.ok()) << policy.status();
  Allocator core(MemfdOfUid(kDaemonUid), Limits(), *policy);
  Peer camera = OpenPeer(core, 1000), viewer = OpenPeer(core, kDaemonUid);
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(4096);
  req.mutable_desc()->set_usage(usage::kCpuReadOften);
  absl::Status s = core.Allocate(*viewer.session, req).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "(max_cpu_access of rule 'viewer')")) << s;

  req.mutable_desc()->set_usage(0);
  absl::StatusOr<v1::AllocateResponse> r = core.Allocate(*camera.session, req);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::ShareRequest share;
  share.set_buffer_id(r->buffers(0).id());
  share.mutable_peer()->set_name("viewer");
  absl::StatusOr<v1::Grant> grant = core.Share(*camera.session, share);
  ASSERT_TRUE(grant.ok()) << grant.status();
  s = core.Import(*viewer.session, grant->token()).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "uid 7, hallocd's own")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "rule 'viewer'")) << s;
  EXPECT_EQ(core.Stats().live_buffers(), 1u);  // the camera's, nothing made or lost
}

}  // namespace
}  // namespace halloc
