// Import, Share and Revoke on the broker (fixture and test children:
// broker_identity_testing.h): each answered in one record (an Import's fd
// with its reply, or no fd), and judged by the kernel's stamp on the
// request, as Allocate is.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/broker.h"
#include "service/broker_identity_testing.h"
#include "service/broker_test_util.h"

namespace halloc {
namespace {

v1::BrokerRequest ImportRequest(uint64_t request_id, const std::string& token) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_import_buffer()->set_grant_token(token);
  return req;
}

// A page allocated on the fast path on `sock`: its id and fd, in `id` and
// `fd`.
void AllocatePage(int sock, uint64_t* id, UniqueFd* fd) {
  v1::BrokerRequest req;
  req.set_request_id(1);
  req.mutable_allocate()->mutable_desc()->set_size(4096);
  absl::StatusOr<Answer> a = Ask(sock, req);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(ReplyStatus(a->reply).ok()) << ReplyStatus(a->reply);
  ASSERT_EQ(a->fds.size(), 1u);
  *id = a->reply.allocate().buffers(0).id();
  *fd = std::move(a->fds[0]);
}

// A connection to the broker at `path` with one page allocated on it: the
// connection in `owner`, the page's id and fd in `id` and `fd`.
void ConnectWithPage(const std::string& path, absl::StatusOr<BrokerConnection>* owner, uint64_t* id,
                     UniqueFd* fd) {
  *owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner->ok()) << owner->status();
  ASSERT_NO_FATAL_FAILURE(AllocatePage((*owner)->fd.get(), id, fd));
}

// A page `conn` allocates on the fast path, shared by its session with
// `peer` (through the core, as the gRPC Share does): the grant and the page's
// fd, in `grant` and `fd`.
void AllocateAndShare(Allocator& core, const BrokerConnection& conn, const v1::Peer& peer,
                      v1::Grant* grant, UniqueFd* fd) {
  uint64_t id = 0;
  ASSERT_NO_FATAL_FAILURE(AllocatePage(conn.fd.get(), &id, fd));
  absl::StatusOr<std::shared_ptr<Session>> session =
      core.Authenticate(conn.welcome.session_token());
  ASSERT_TRUE(session.ok()) << session.status();
  v1::ShareRequest share;
  share.set_buffer_id(id);
  *share.mutable_peer() = peer;
  share.set_cpu_access(v1::CPU_ACCESS_READ);
  absl::StatusOr<v1::Grant> g = core.Share(**session, share);
  ASSERT_TRUE(g.ok()) << g.status();
  *grant = *std::move(g);
}

// Whether the session on `sock` holds buffer `id` (a Describe of it works).
bool Holds(int sock, uint64_t id) {
  v1::BrokerRequest req;
  req.set_request_id(31);
  req.mutable_describe()->set_buffer_id(id);
  absl::StatusOr<Answer> a = Ask(sock, req);
  return a.ok() && ReplyStatus(a->reply).ok();
}

TEST_F(BrokerIdentityTest, AnImportIsAnsweredWithItsFdInTheSameRecordOrWithNoFd) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->welcome.broker_import());
  v1::Peer peer;
  peer.set_uid(::getuid());
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, peer, &grant, &page));

  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  const int sock = importer->fd.get();
  absl::StatusOr<Answer> got = Ask(sock, ImportRequest(9, grant.token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->reply.request_id(), 9u);
  ASSERT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  ASSERT_TRUE(got->reply.has_import_buffer());
  const v1::BufferInfo& info = got->reply.import_buffer().buffer();
  EXPECT_EQ(info.id(), grant.buffer_id());
  EXPECT_EQ(info.cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_FALSE(info.owned());
  ASSERT_EQ(got->fds.size(), 1u);
  struct stat mine, theirs;
  ASSERT_EQ(::fstat(page.get(), &mine), 0);
  ASSERT_EQ(::fstat(got->fds[0].get(), &theirs), 0);
  EXPECT_EQ(mine.st_ino, theirs.st_ino) << "the same pages";
  EXPECT_EQ(::fcntl(got->fds[0].get(), F_GETFL) & O_ACCMODE, O_RDONLY) << "the grant's rights";

  // Refused: an error reply, and no fd with it.
  for (const std::string& token :
       {std::string("no such grant"), std::string(), std::string("\xff\xfe", 2)}) {
    SCOPED_TRACE(absl::CEscape(token));
    absl::StatusOr<Answer> bad = Ask(sock, ImportRequest(10, token));
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_EQ(bad->reply.request_id(), 10u);
    EXPECT_EQ(ReplyStatus(bad->reply).code(), absl::StatusCode::kNotFound);
    EXPECT_FALSE(bad->reply.has_import_buffer());
    EXPECT_TRUE(bad->fds.empty());
  }
  absl::StatusOr<std::shared_ptr<Session>> owner_session =
      core_->Authenticate(owner->welcome.session_token());
  ASSERT_TRUE(owner_session.ok());
  ASSERT_TRUE(core_->Revoke(**owner_session, grant.id()).ok());
  absl::StatusOr<Answer> revoked = Ask(sock, ImportRequest(11, grant.token()));
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(ReplyStatus(revoked->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(revoked->fds.empty());
}

// Each import on the broker is one reference on the session's hold: a
// Release with import_references gives back one (what a client does with
// an import reply it did not keep) and the hold goes with the last; the
// Welcome says hallocd counts them.
TEST_F(BrokerIdentityTest, EachImportIsOneReferenceTheClientGivesBack) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_TRUE(owner->welcome.import_references());
  v1::Peer peer;
  peer.set_uid(::getuid());
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, peer, &grant, &page));
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  const int sock = importer->fd.get();
  for (uint64_t rid : {20, 21}) {
    absl::StatusOr<Answer> got = Ask(sock, ImportRequest(rid, grant.token()));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
    EXPECT_EQ(got->reply.import_buffer().newly_held(), rid == 20);
  }
  auto give_back = [&](bool references) {
    v1::BrokerRequest req;
    req.set_request_id(30);
    req.mutable_release()->add_buffer_ids(grant.buffer_id());
    req.mutable_release()->set_import_references(references);
    absl::StatusOr<Answer> a = Ask(sock, req);
    return a.ok() ? ReplyStatus(a->reply) : a.status();
  };
  auto held = [&] { return Holds(sock, grant.buffer_id()); };
  ASSERT_TRUE(give_back(true).ok());
  EXPECT_TRUE(held()) << "the other import's reference holds it";
  ASSERT_TRUE(give_back(true).ok());
  EXPECT_FALSE(held()) << "the last reference went";
  EXPECT_EQ(give_back(true).code(), absl::StatusCode::kNotFound);
  // A plain Release drops the hold whatever its references.
  for (uint64_t rid : {22, 23}) {
    absl::StatusOr<Answer> got = Ask(sock, ImportRequest(rid, grant.token()));
    ASSERT_TRUE(got.ok() && ReplyStatus(got->reply).ok());
  }
  ASSERT_TRUE(give_back(false).ok());
  EXPECT_FALSE(held());
}

// A give-back names the hold its import was on (ImportResponse.
// hold_generation): one that comes after that hold was Released whole and a
// new import made a new hold is given back already, and leaves the new
// hold, which its caller uses. The Welcome says hallocd takes them.
TEST_F(BrokerIdentityTest, ALateGiveBackLeavesTheHoldMadeSinceItsImport) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  v1::Peer peer;
  peer.set_uid(::getuid());
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, peer, &grant, &page));
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  EXPECT_TRUE(importer->welcome.hold_generations());
  const int sock = importer->fd.get();
  auto import = [&](uint64_t rid) -> uint64_t {
    absl::StatusOr<Answer> got = Ask(sock, ImportRequest(rid, grant.token()));
    EXPECT_TRUE(got.ok() && ReplyStatus(got->reply).ok());
    return got.ok() ? got->reply.import_buffer().hold_generation() : 0;
  };
  auto release = [&](bool references, std::vector<uint64_t> generations) {
    v1::BrokerRequest req;
    req.set_request_id(30);
    for (size_t i = 0; i < std::max<size_t>(generations.size(), 1); ++i) {
      req.mutable_release()->add_buffer_ids(grant.buffer_id());
    }
    req.mutable_release()->set_import_references(references);
    for (uint64_t g : generations) req.mutable_release()->add_hold_generations(g);
    absl::StatusOr<Answer> a = Ask(sock, req);
    return a.ok() ? ReplyStatus(a->reply) : a.status();
  };
  auto held = [&] { return Holds(sock, grant.buffer_id()); };
  const uint64_t abandoned = import(20);  // its caller gave up: given back later
  ASSERT_NE(abandoned, 0u);
  ASSERT_TRUE(release(false, {}).ok());  // another thread Releases the buffer whole
  const uint64_t in_use = import(21);    // and a third imports it again
  EXPECT_NE(in_use, abandoned);
  ASSERT_TRUE(release(true, {abandoned}).ok()) << "that hold went: given back already";
  EXPECT_TRUE(held()) << "the late give-back took the new hold's only reference";
  ASSERT_TRUE(release(true, {in_use, in_use}).ok());
  EXPECT_FALSE(held()) << "named right, its reference went (the second is of a hold gone)";
}

TEST_F(BrokerIdentityTest, AnImportIsJudgedByItsStampLikeAnAllocate) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(owner.ok()) << owner.status();
  v1::Peer trusted;
  trusted.set_name("trusted");
  v1::Grant grant;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(AllocateAndShare(*core_, *owner, trusted, &grant, &page));

  // The verified process, python after its exec, asks on its socket.
  absl::StatusOr<v1::BrokerReply> reply = AskedAfterExec(path, ImportRequest(7, grant.token()));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id(), 7u);
  EXPECT_EQ(reply->code(), static_cast<int>(absl::StatusCode::kPermissionDenied))
      << "python, exec'd by the verified process, is client 'others', not 'trusted'";

  // The same grant, asked for by a verified process of this executable.
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got = Ask(importer->fd.get(), ImportRequest(8, grant.token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  EXPECT_EQ(got->fds.size(), 1u);
}

v1::BrokerRequest ShareRequest(uint64_t request_id, uint64_t buffer_id, const std::string& peer) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_share()->set_buffer_id(buffer_id);
  req.mutable_share()->mutable_peer()->set_name(peer);
  return req;
}

TEST_F(BrokerIdentityTest, AShareIsAnsweredWithItsGrantAndJudgedByItsStamp) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is needed to exec into";
  // Only client "trusted" (this executable) may share, with itself.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner;
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(ConnectWithPage(path, &owner, &id, &page));
  EXPECT_TRUE(owner->welcome.broker_share());

  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), ShareRequest(2, id, "trusted"));
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->reply.request_id(), 2u);
  ASSERT_TRUE(ReplyStatus(shared->reply).ok()) << ReplyStatus(shared->reply);
  ASSERT_TRUE(shared->reply.has_share());
  EXPECT_EQ(shared->reply.share().grant().buffer_id(), id);
  EXPECT_EQ(shared->reply.share().grant().token().size(), 32u);
  EXPECT_TRUE(shared->fds.empty());
  // The grant works: another session of this executable imports it.
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got =
      Ask(importer->fd.get(), ImportRequest(3, shared->reply.share().grant().token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok()) << ReplyStatus(got->reply);
  EXPECT_EQ(got->fds.size(), 1u);

  // Refused: a buffer the session does not hold, and no peer at all.
  absl::StatusOr<Answer> unknown =
      Ask(owner->fd.get(), ShareRequest(4, uint64_t{1} << 40, "trusted"));
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(ReplyStatus(unknown->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(unknown->reply.has_share());
  v1::BrokerRequest no_peer;
  no_peer.set_request_id(5);
  no_peer.mutable_share()->set_buffer_id(id);
  absl::StatusOr<Answer> nobody = Ask(owner->fd.get(), no_peer);
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  EXPECT_EQ(ReplyStatus(nobody->reply).code(), absl::StatusCode::kInvalidArgument);

  // Python, exec'd by a verified process of this executable, asks on its
  // socket to share the buffer that process allocated to be trusted:
  // client "others", whose rule shares with no one. (Judged as the
  // session, it would have been given a grant.) Ids come from one counter,
  // in order: that buffer's is the next after a probe's made now.
  v1::BrokerRequest alloc;
  alloc.set_request_id(6);
  alloc.mutable_allocate()->mutable_desc()->set_size(4096);
  absl::StatusOr<Answer> probe = Ask(owner->fd.get(), alloc);
  ASSERT_TRUE(probe.ok()) << probe.status();
  ASSERT_EQ(probe->reply.allocate().buffers_size(), 1) << ReplyStatus(probe->reply);
  const uint64_t childs = probe->reply.allocate().buffers(0).id() + 1;
  absl::StatusOr<v1::BrokerReply> reply = AskedAfterExec(path, ShareRequest(7, childs, "trusted"));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id(), 7u);
  EXPECT_EQ(reply->code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
}

// A Share naming a peer of 60,000 bytes (no client name is longer than 63)
// is answered INVALID_ARGUMENT (not audited). Before, the
// refusal quoted the name escaped (~240 KB): too large for a record, it was
// never sent (the client waited for it forever), and AUDIT lines of ~30 KB
// came four a second per uid.
TEST_F(BrokerIdentityTest, AShareNamingAnOverlongPeerIsAnswered) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner;
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(ConnectWithPage(path_, &owner, &id, &page));
  for (uint64_t buffer : {id, uint64_t{1} << 40}) {
    absl::StatusOr<Answer> got =
        Ask(owner->fd.get(), ShareRequest(8, buffer, std::string(60000, '\xff')));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->reply.request_id(), 8u);
    EXPECT_EQ(ReplyStatus(got->reply).code(), absl::StatusCode::kInvalidArgument)
        << ReplyStatus(got->reply);
    EXPECT_LT(got->reply.message().size(), 200u);
  }
}

// A Share whose reply cannot be sent (the client leaves its socket full)
// withdraws its grant: nobody learned the token, and it counted against the
// session's grants until the session ended (gRPC withdraws such a grant).
TEST_F(BrokerIdentityTest, AGrantWhoseReplyCannotBeSentIsWithdrawn) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner;
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(ConnectWithPage(path_, &owner, &id, &page));
  // Answers never read fill the client's socket.
  v1::BrokerRequest describe;
  describe.mutable_describe()->set_buffer_id(id);
  for (uint64_t i = 0; i < 4000; ++i) {  // the broker's send buffer holds a few hundred
    describe.set_request_id(100 + i);
    ASSERT_TRUE(SendRecord(owner->fd.get(), describe.SerializeAsString(), {}, false).ok());
  }
  v1::BrokerRequest share = ShareRequest(7, id, "");
  share.mutable_share()->mutable_peer()->set_uid(::getuid());
  ASSERT_TRUE(SendRecord(owner->fd.get(), share.SerializeAsString(), {}, false).ok());
  v1::StatsResponse stats;
  for (int i = 0; i < 1000; ++i) {
    stats = core_->Stats();
    if (stats.grants() + stats.grants_revoked_total() > 0) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GT(stats.grants() + stats.grants_revoked_total(), 0u) << "the Share was not made";
  // Its answer never came (the case this is about).
  for (;;) {
    absl::StatusOr<Record> rec = ReceiveRecord(owner->fd.get(), /*nonblocking=*/true);
    if (!rec.ok()) break;
    v1::BrokerFrame frame;
    ASSERT_TRUE(frame.ParseFromString(rec->bytes) && frame.has_reply());
    ASSERT_NE(frame.reply().request_id(), 7u) << "the Share was answered: nothing to test";
  }
  EXPECT_EQ(core_->Stats().grants(), 0u) << "a grant nobody learned is kept";
  // The session goes on.
  absl::StatusOr<Answer> again = Ask(owner->fd.get(), describe);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(ReplyStatus(again->reply).ok()) << ReplyStatus(again->reply);
}

// A refusal's message goes out valid UTF-8 and cut; a reply too large for
// a record goes out as RESOURCE_EXHAUSTED for the same request.
TEST(BrokerReplyTest, EveryRequestGetsAReplyThatFitsARecord) {
  v1::BrokerReply r = Broker::ErrorReply(
      3, absl::PermissionDeniedError("caf\xc3\xa9 " + std::string(5000, 'x') + "\xff"));
  EXPECT_EQ(r.request_id(), 3u);
  EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_LE(r.message().size(), Broker::kMaxReplyMessageBytes);
  EXPECT_TRUE(absl::StartsWith(r.message(), "caf\\xc3\\xa9 xxx")) << "not UTF-8: escaped";
  EXPECT_TRUE(absl::EndsWith(r.message(), "..."));
  r = Broker::ErrorReply(4, absl::InvalidArgumentError(std::string(2000, 'y') + "\xc3\xa9"));
  v1::BrokerFrame frame;
  ASSERT_TRUE(frame.ParseFromString(Broker::ReplyRecord(r)));
  EXPECT_EQ(frame.reply().message(), r.message());

  v1::BrokerReply big;
  big.set_request_id(9);
  for (int i = 0; i < 8000; ++i) {
    v1::Holder* h = big.mutable_describe()->mutable_buffer()->add_holders();
    h->set_session_id(1000000 + i);
    h->set_uid(100000);
    h->set_pid(4000000);
  }
  const std::string record = Broker::ReplyRecord(big);
  EXPECT_LE(record.size(), kMaxRecordBytes);
  ASSERT_TRUE(frame.ParseFromString(record));
  EXPECT_EQ(frame.reply().request_id(), 9u);
  EXPECT_EQ(frame.reply().code(), static_cast<int>(absl::StatusCode::kResourceExhausted))
      << frame.reply().message();
  EXPECT_FALSE(frame.reply().has_describe());
  big.mutable_describe()->mutable_buffer()->mutable_holders()->DeleteSubrange(0, 7990);
  ASSERT_TRUE(frame.ParseFromString(Broker::ReplyRecord(big)));
  EXPECT_EQ(frame.reply().code(), 0);
  EXPECT_EQ(frame.reply().describe().buffer().holders_size(), 10);
}

TEST_F(BrokerIdentityTest, ARevokeIsAnsweredOnTheBrokerAndEndsTheGrant) {
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  absl::StatusOr<BrokerConnection> owner;
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(ConnectWithPage(path_, &owner, &id, &page));
  EXPECT_TRUE(owner->welcome.broker_revoke());
  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), ShareRequest(2, id, "trusted"));
  ASSERT_TRUE(shared.ok() && ReplyStatus(shared->reply).ok());
  const v1::Grant grant = shared->reply.share().grant();
  const auto revoke = [](uint64_t request_id, uint64_t grant_id) {
    v1::BrokerRequest req;
    req.set_request_id(request_id);
    req.mutable_revoke()->set_grant_id(grant_id);
    return req;
  };
  // Another session may not revoke it: to that session it does not exist.
  absl::StatusOr<BrokerConnection> other = ConnectBroker(path_, absl::Seconds(10));
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Answer> stranger = Ask(other->fd.get(), revoke(3, grant.id()));
  ASSERT_TRUE(stranger.ok()) << stranger.status();
  EXPECT_EQ(ReplyStatus(stranger->reply).code(), absl::StatusCode::kNotFound);

  absl::StatusOr<Answer> revoked = Ask(owner->fd.get(), revoke(4, grant.id()));
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->reply.request_id(), 4u);
  EXPECT_TRUE(ReplyStatus(revoked->reply).ok()) << ReplyStatus(revoked->reply);
  EXPECT_TRUE(revoked->reply.has_revoke());
  EXPECT_TRUE(revoked->fds.empty());
  // The token imports no more; the grant cannot be revoked twice.
  absl::StatusOr<Answer> late = Ask(other->fd.get(), ImportRequest(5, grant.token()));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(ReplyStatus(late->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(late->fds.empty());
  absl::StatusOr<Answer> again = Ask(owner->fd.get(), revoke(6, grant.id()));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ReplyStatus(again->reply).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(again->reply.has_revoke());
}

// A grant keeps its sharer, judged again at each Import: one made on the
// broker under a policy without executable rules keeps the verified
// executable, so that a policy reloaded with such rules still matches it.
TEST_F(BrokerIdentityTest, AGrantMadeOnTheBrokerKeepsItsSharersExecutable) {
  absl::StatusOr<std::shared_ptr<const Policy>> plain = Policy::Parse(
      "clients { name: \"all\" match { any: true } usages: \"*\" heaps: \"*\" "
      "max_cpu_access: CPU_ACCESS_READ_WRITE share_to: \"*\" receive_from: \"*\" }\n",
      "broker_identity_test");
  ASSERT_TRUE(plain.ok()) << plain.status();
  core_->SetPolicy(*plain);
  ASSERT_FALSE(core_->policy()->matches_exe());
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const std::string& path = path_;
  absl::StatusOr<BrokerConnection> owner;
  uint64_t id = 0;
  UniqueFd page;
  ASSERT_NO_FATAL_FAILURE(ConnectWithPage(path, &owner, &id, &page));
  v1::BrokerRequest share;
  share.set_request_id(2);
  share.mutable_share()->set_buffer_id(id);
  share.mutable_share()->mutable_peer()->set_uid(::getuid());
  absl::StatusOr<Answer> shared = Ask(owner->fd.get(), share);
  ASSERT_TRUE(shared.ok() && ReplyStatus(shared->reply).ok());

  // Now only this executable (client "trusted") shares with anyone.
  ASSERT_NO_FATAL_FAILURE(TrustOnlyThisExecutable(*core_));
  absl::StatusOr<BrokerConnection> importer = ConnectBroker(path, absl::Seconds(10));
  ASSERT_TRUE(importer.ok()) << importer.status();
  absl::StatusOr<Answer> got =
      Ask(importer->fd.get(), ImportRequest(3, shared->reply.share().grant().token()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(ReplyStatus(got->reply).ok())
      << ReplyStatus(got->reply) << " (the grant's sharer lost its executable)";
  EXPECT_EQ(got->fds.size(), 1u);
}

}  // namespace
}  // namespace halloc
