// The broker's slow lane: large fast-path allocations are made on a thread
// of their own, a bounded share per uid, so that no client's commit holds
// up the broker thread (broker.h).
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "gtest/gtest.h"
#include "service/backend/memfd_backend.h"
#include "service/broker.h"
#include "service/broker_test_util.h"

namespace halloc {
namespace {

// Sets one of Broker's static durations (read at Start) for its scope.
class Override {
 public:
  Override(absl::Duration& value, absl::Duration set) : value_(value), saved_(value) {
    value_ = set;
  }
  ~Override() { value_ = saved_; }
  Override(const Override&) = delete;
  Override& operator=(const Override&) = delete;

 private:
  absl::Duration& value_;
  const absl::Duration saved_;
};

class SlowLaneTest : public ::testing::Test {
 protected:
  // A broker over `core` whose uids may take 20 ms of its thread within
  // 30 s (long, so that a slow machine cannot end the window between
  // calls).
  absl::StatusOr<std::unique_ptr<Broker>> StartWithInlineShare(Allocator& core) {
    Override window(Broker::inline_window, absl::Seconds(30));
    Override allowed(Broker::inline_allowed, absl::Milliseconds(20));
    return Broker::Start(dir_ / "broker.sock", 0600, &core);
  }

  testing::TempDir dir_{"slow-lane-test"};
};

// A memfd backend whose allocations of 64 MiB or more say they began
// (`entered`) and then wait for `open`.
class GatedBackend : public Backend {
 public:
  GatedBackend(absl::Notification* entered, absl::Notification* open)
      : entered_(entered), open_(open) {}
  absl::string_view name() const override { return inner_.name(); }
  bool MakesDmaBufs() const override { return inner_.MakesDmaBufs(); }
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (r.size >= (uint64_t{64} << 20)) {
      if (!entered_->HasBeenNotified()) entered_->Notify();  // one thread calls
      open_->WaitForNotification();
    }
    return inner_.Allocate(r);
  }
  bool CanEnforce(CpuAccess a) const override { return inner_.CanEnforce(a); }
  bool CanEnforceFor(CpuAccess a, const Holder& h) const override {
    return inner_.CanEnforceFor(a, h);
  }
  absl::StatusOr<UniqueFd> OpenView(const UniqueFd& b, const ViewRights& r) override {
    return inner_.OpenView(b, r);
  }
  bool NeedsView(const ViewRights& r) const override { return inner_.NeedsView(r); }

 private:
  absl::Notification* const entered_;
  absl::Notification* const open_;
  MemfdBackend inner_;
};

// A large allocation is made off the broker thread: while one is being
// committed (held here), another client's small one is answered at once.
// A broker whose large allocations wait for `open` (GatedBackend).
struct GatedBroker {
  explicit GatedBroker(const std::string& dir)
      : path(dir + "/broker.sock"),
        core(std::make_unique<GatedBackend>(&entered, &open), Limits()) {}
  ~GatedBroker() {
    if (!open.HasBeenNotified()) open.Notify();
    if (broker) broker->Stop();
  }
  absl::Status Start() {
    ASSIGN_OR_RETURN(broker, Broker::Start(path, 0600, &core));
    return absl::OkStatus();
  }
  const std::string path;
  absl::Notification entered, open;
  Allocator core;
  std::unique_ptr<Broker> broker;
};

TEST_F(SlowLaneTest, ALargeAllocationDoesNotHoldUpOtherClients) {
  GatedBroker gated(dir_.path());
  ASSERT_TRUE(gated.Start().ok());
  absl::Notification &entered = gated.entered, &open = gated.open;
  absl::StatusOr<BrokerConnection> big = ConnectBroker(gated.path, absl::Seconds(5));
  absl::StatusOr<BrokerConnection> small = ConnectBroker(gated.path, absl::Seconds(5));
  ASSERT_TRUE(big.ok() && small.ok());
  size_t big_fds = 0, small_fds = 0;
  std::thread big_client(
      [&] { EXPECT_TRUE(AllocateOn(big->fd.get(), uint64_t{64} << 20, &big_fds).ok()); });
  // The large allocation is being made (and held) before the small one is asked.
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::Status s = AllocateOn(small->fd.get(), 4096, &small_fds);
  EXPECT_TRUE(s.ok()) << s << " (the broker thread waited for the large allocation)";
  EXPECT_EQ(small_fds, 1u);
  open.Notify();
  big_client.join();
  EXPECT_EQ(big_fds, 1u);
}

// A request the plan refuses (too many buffers for a call) is answered at
// once, whatever size it claims: it went to the slow lane by that size,
// took one of its uid's places there and was answered behind whatever held
// the lane.
TEST_F(SlowLaneTest, ARefusedAllocationIsAnsweredAtOnceWhateverSizeItClaims) {
  GatedBroker gated(dir_.path());
  ASSERT_TRUE(gated.Start().ok());
  absl::StatusOr<BrokerConnection> big = ConnectBroker(gated.path, absl::Seconds(5));
  absl::StatusOr<BrokerConnection> other = ConnectBroker(gated.path, absl::Seconds(5));
  ASSERT_TRUE(big.ok() && other.ok());
  size_t big_fds = 0;
  std::thread big_client(
      [&] { EXPECT_TRUE(AllocateOn(big->fd.get(), uint64_t{64} << 20, &big_fds).ok()); });
  ASSERT_TRUE(gated.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));  // lane held
  v1::BrokerRequest req;
  req.set_request_id(9);
  req.mutable_allocate()->mutable_desc()->set_size(uint64_t{64} << 20);
  req.mutable_allocate()->set_count(100000);
  absl::StatusOr<Answer> refused = Ask(other->fd.get(), req);
  ASSERT_TRUE(refused.ok()) << refused.status() << " (answered from behind the held lane?)";
  EXPECT_EQ(ReplyStatus(refused->reply).code(), absl::StatusCode::kInvalidArgument)
      << ReplyStatus(refused->reply);
  gated.open.Notify();
  big_client.join();
  EXPECT_EQ(big_fds, 1u);
}

// The slow lane's share is per uid: more connections of one uid do not
// buy it more of the queue. A request past it waits (its connection
// unread) and is made once there is room, as the gRPC path would make it
// on its own thread; it used to be refused.
TEST_F(SlowLaneTest, OneUidsConnectionsShareItsPlaceOnTheSlowLane) {
  GatedBroker gated(dir_.path());
  ASSERT_TRUE(gated.Start().ok());
  std::vector<BrokerConnection> conns;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<BrokerConnection> c = ConnectBroker(gated.path, absl::Seconds(5));
    ASSERT_TRUE(c.ok()) << c.status();
    conns.push_back(*std::move(c));
  }
  constexpr uint64_t kLarge = uint64_t{64} << 20;
  size_t fds = 0;
  std::thread first([&] { EXPECT_TRUE(AllocateOn(conns[0].fd.get(), kLarge, &fds).ok()); });
  ASSERT_TRUE(gated.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // One being made, three more waiting, from a second connection.
  v1::BrokerRequest req;
  req.mutable_allocate()->mutable_desc()->set_size(kLarge);
  for (int i = 0; i < static_cast<int>(Broker::kSlowLanePerUid) - 1; ++i) {
    req.set_request_id(10 + i);
    ASSERT_TRUE(SendRecord(conns[1].fd.get(), req.SerializeAsString(), {}, false).ok());
  }
  // Taken by the broker (its thread posts each one before reading on).
  for (int i = 0; i < 2000; ++i) {
    int queued = -1;
    ASSERT_EQ(::ioctl(conns[1].fd.get(), SIOCOUTQ, &queued), 0);
    if (queued == 0) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  // A third connection of the same uid finds the uid's share taken: not
  // answered until there is room.
  req.set_request_id(99);
  ASSERT_TRUE(SendRecord(conns[2].fd.get(), req.SerializeAsString(), {}, false).ok());
  EXPECT_FALSE(WaitReadable(conns[2].fd.get(), 200).ok()) << "answered while the lane was full";
  gated.open.Notify();
  first.join();
  ASSERT_TRUE(WaitReadable(conns[2].fd.get(), 10000).ok());
  absl::StatusOr<Record> third = ReceiveRecord(conns[2].fd.get(), false);
  ASSERT_TRUE(third.ok()) << third.status();
  v1::BrokerFrame frame;
  ASSERT_TRUE(frame.ParseFromString(third->bytes) && frame.has_reply());
  EXPECT_EQ(frame.reply().code(), 0) << frame.reply().message();
  EXPECT_EQ(third->fds.size(), 1u);
  for (int i = 0; i < static_cast<int>(Broker::kSlowLanePerUid) - 1; ++i) {
    ASSERT_TRUE(WaitReadable(conns[1].fd.get(), 10000).ok());
    absl::StatusOr<Record> rec = ReceiveRecord(conns[1].fd.get(), false);
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->fds.size(), 1u) << "the waiting ones are made in turn";
  }
}

// A memfd backend that takes `each` per allocation of `from` bytes or more
// (a commit stand-in) and notes which thread made each allocation.
class SlowBackend : public MemfdBackend {
 public:
  explicit SlowBackend(absl::Duration each, uint64_t from = Broker::kBudgetedBytes)
      : each_(each), from_(from) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (r.size >= from_) absl::SleepFor(each_);
    {
      absl::MutexLock lock(&mu_);
      threads_.push_back(std::this_thread::get_id());
    }
    return MemfdBackend::Allocate(r);
  }
  std::vector<std::thread::id> threads() {
    absl::MutexLock lock(&mu_);
    return threads_;
  }

 private:
  const absl::Duration each_;
  const uint64_t from_;
  absl::Mutex mu_;
  std::vector<std::thread::id> threads_ ABSL_GUARDED_BY(mu_);
};

// A uid that has had its share of the broker thread's time lately gets its
// allocations of kBudgetedBytes or more (here 1 MiB) made on the slow lane
// (its answers still come), its small ones inline as ever: one uid's
// stream of requests just under the slow lane's 64 MiB cannot take the
// broker thread turn after turn.
TEST_F(SlowLaneTest, AUidPastItsInlineShareIsServedOnTheSlowLane) {
  auto backend = std::make_unique<SlowBackend>(absl::Milliseconds(40));
  SlowBackend* slow = backend.get();
  Allocator core(std::move(backend), Limits());
  absl::StatusOr<std::unique_ptr<Broker>> broker = StartWithInlineShare(core);
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(dir_ / "broker.sock", absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  size_t fds = 0;
  ASSERT_TRUE(AllocateOn(c->fd.get(), 4096, &fds).ok());          // inline
  ASSERT_TRUE(AllocateOn(c->fd.get(), 1 << 20, &fds).ok());       // inline: 40 ms
  ASSERT_TRUE(AllocateOn(c->fd.get(), 1 << 20, &fds).ok());       // past its share
  EXPECT_EQ(fds, 1u);
  ASSERT_TRUE(AllocateOn(c->fd.get(), 4096, &fds).ok());          // small: inline
  const std::vector<std::thread::id> t = slow->threads();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[1], t[0]) << "the first 1 MiB one was made inline";
  EXPECT_NE(t[2], t[0]) << "the second 1 MiB one was made on the broker thread";
  EXPECT_EQ(t[3], t[0]) << "a small one left the broker thread";

  // A burst past the uid's place on the slow lane is slowed, not failed:
  // what finds the place taken waits for room, its connection unread. (The
  // requests carry unknown fields, which a waiting one is kept without.)
  constexpr int kBurst = static_cast<int>(Broker::kSlowLanePerUid) + 3;
  v1::BrokerRequest req;
  req.mutable_allocate()->mutable_desc()->set_size(1 << 20);
  std::string padding;
  for (int i = 0; i < 4000; ++i) padding += "\xc0\x3e";  // field 1000, varint 0
  for (int i = 0; i < 4000; ++i) padding.insert(i * 3 + 2, 1, '\0');
  for (int i = 0; i < kBurst; ++i) {
    req.set_request_id(100 + i);
    ASSERT_TRUE(SendRecord(c->fd.get(), req.SerializeAsString() + padding, {}, false).ok());
  }
  for (int i = 0; i < kBurst; ++i) {
    ASSERT_TRUE(WaitReadable(c->fd.get(), 10000).ok()) << i;
    absl::StatusOr<Record> rec = ReceiveRecord(c->fd.get(), false);
    ASSERT_TRUE(rec.ok()) << rec.status();
    v1::BrokerFrame frame;
    ASSERT_TRUE(frame.ParseFromString(rec->bytes) && frame.has_reply());
    EXPECT_TRUE(ReplyStatus(frame.reply()).ok()) << ReplyStatus(frame.reply());
    EXPECT_EQ(rec->fds.size(), 1u);
  }
  const std::vector<std::thread::id> all = slow->threads();
  ASSERT_EQ(all.size(), 4u + kBurst);
  for (size_t i = 4; i < all.size(); ++i) EXPECT_NE(all[i], t[0]) << i;
  (*broker)->Stop();
}

// Every allocation made on the broker thread counts towards its uid's
// share, whatever its size, and what could cost more than a plain request
// (64 KiB or more, each buffer as whole pages; several buffers) leaves the
// thread once the share is used: requests just under a byte threshold
// took the thread as long as those over it, untimed.
TEST_F(SlowLaneTest, EveryInlineAllocationCountsTowardsItsUidsShare) {
  // Each allocation of a page or more takes 40 ms; the share is 20 ms.
  auto backend = std::make_unique<SlowBackend>(absl::Milliseconds(40), 4096);
  SlowBackend* slow = backend.get();
  Allocator core(std::move(backend), Limits());
  absl::StatusOr<std::unique_ptr<Broker>> broker = StartWithInlineShare(core);
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> c = ConnectBroker(dir_ / "broker.sock", absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  size_t fds = 0;
  ASSERT_TRUE(AllocateOn(c->fd.get(), 4096, &fds).ok());  // inline, timed: 40 ms
  // Past its share now: these leave the broker thread.
  ASSERT_TRUE(AllocateOn(c->fd.get(), (uint64_t{1} << 20) - 4096, &fds).ok());
  ASSERT_TRUE(AllocateOn(c->fd.get(), Broker::kBudgetedBytes - 1, &fds).ok());  // 16 pages
  ASSERT_TRUE(AllocateOn(c->fd.get(), 1, &fds, /*count=*/2).ok());              // two memfds
  EXPECT_EQ(fds, 2u);
  // One small buffer costs what a plain request does: inline as ever.
  ASSERT_TRUE(AllocateOn(c->fd.get(), 4096, &fds).ok());
  const std::vector<std::thread::id> t = slow->threads();
  ASSERT_EQ(t.size(), 6u);
  const std::thread::id broker_thread = t[0];
  EXPECT_NE(t[1], broker_thread) << "1 MiB less a page was made on the broker thread";
  EXPECT_NE(t[2], broker_thread) << "64 KiB less a byte was made on the broker thread";
  EXPECT_NE(t[3], broker_thread) << "two buffers were made on the broker thread";
  EXPECT_NE(t[4], broker_thread) << "two buffers were made on the broker thread";
  EXPECT_EQ(t[5], broker_thread) << "a single page left the broker thread";
  (*broker)->Stop();
}

// A record's parse cost is its sender's to choose up to the record limit
// (64 KiB of empty unknown fields: ~250 µs of the broker thread, against
// ~1 µs for a real request): a uid whose long records took parse_allowed
// within parse_window is not read, on any of its connections, until that
// window ends; then it is served again.
TEST_F(SlowLaneTest, AUidPastItsParseShareIsNotReadUntilItsWindowEnds) {
  Allocator core(std::make_unique<MemfdBackend>(), Limits());
  absl::StatusOr<std::unique_ptr<Broker>> broker;
  {
    Override window(Broker::parse_window, absl::Seconds(3));
    Override allowed(Broker::parse_allowed, absl::Milliseconds(1));
    broker = Broker::Start(dir_ / "broker.sock", 0600, &core);
  }
  ASSERT_TRUE(broker.ok()) << broker.status();
  absl::StatusOr<BrokerConnection> a = ConnectBroker(dir_ / "broker.sock", absl::Seconds(5));
  absl::StatusOr<BrokerConnection> b = ConnectBroker(dir_ / "broker.sock", absl::Seconds(5));
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  v1::BrokerRequest describe;
  describe.set_request_id(7);
  describe.mutable_describe()->set_buffer_id(999);
  std::string padded = describe.SerializeAsString();
  for (int i = 0; i < 20000; ++i) padded += std::string("\xc0\x3e\x00", 3);  // field 1000: 0
  auto answered = [](int fd, int ms) {
    if (!WaitReadable(fd, ms).ok()) return false;
    absl::StatusOr<Record> rec = ReceiveRecord(fd, false);
    return rec.ok();
  };
  int served = 0;
  for (; served < 2000; ++served) {
    ASSERT_TRUE(SendRecord(a->fd.get(), padded, {}, false).ok());
    if (!answered(a->fd.get(), 300)) break;  // its uid is not read any more
  }
  EXPECT_LT(served, 2000) << "long records were read on and on";
  // Another connection of that uid is not read either, until the window
  // ends; then both are answered.
  ASSERT_TRUE(SendRecord(b->fd.get(), describe.SerializeAsString(), {}, false).ok());
  EXPECT_FALSE(answered(b->fd.get(), 300)) << "read while its uid was past its share";
  EXPECT_TRUE(answered(b->fd.get(), 10000)) << "still not read after the window";
  EXPECT_TRUE(answered(a->fd.get(), 10000)) << "the last long record was never answered";
  (*broker)->Stop();
}

// A memfd backend that says it revokes live: every view has an id, and
// cutting the first one off says it began (`entered`) and waits for `open`
// (a kernel zapping an importer's many mappings).
class RevokingBackend : public MemfdBackend {
 public:
  RevokingBackend(absl::Notification* entered, absl::Notification* open)
      : entered_(entered), open_(open) {}
  bool CanRevokeLive() const override { return true; }
  absl::StatusOr<RevocableView> OpenRevocableView(const UniqueFd& buffer,
                                                  const ViewRights& rights) override {
    ASSIGN_OR_RETURN(UniqueFd fd, OpenView(buffer, rights));
    return RevocableView{std::move(fd), next_id_.fetch_add(1)};
  }
  absl::Status RevokeView(const UniqueFd& buffer, uint64_t id) override {
    if (!entered_->HasBeenNotified()) entered_->Notify();  // one thread calls
    open_->WaitForNotification();
    absl::MutexLock lock(&mu_);
    revoked_.push_back(id);
    return absl::OkStatus();
  }
  std::vector<uint64_t> revoked() {
    absl::MutexLock lock(&mu_);
    return revoked_;
  }

 private:
  absl::Mutex mu_;
  std::vector<uint64_t> revoked_ ABSL_GUARDED_BY(mu_);
  absl::Notification* const entered_;
  absl::Notification* const open_;
  std::atomic<uint64_t> next_id_{1};
};

v1::BrokerRequest RevokeRequest(uint64_t request_id, uint64_t grant_id) {
  v1::BrokerRequest req;
  req.set_request_id(request_id);
  req.mutable_revoke()->set_grant_id(grant_id);
  return req;
}

// A broker in front of a RevokingBackend (cutting the first view off waits
// for `open`), with `n` connections of this uid.
struct RevokingBroker {
  explicit RevokingBroker(const std::string& dir) : path(dir + "/broker.sock") {
    auto b = std::make_unique<RevokingBackend>(&entered, &open);
    backend = b.get();
    core = std::make_unique<Allocator>(std::move(b), Limits());
  }
  ~RevokingBroker() {
    if (!open.HasBeenNotified()) open.Notify();
    if (broker) broker->Stop();
  }
  absl::Status Start(int n) {
    ASSIGN_OR_RETURN(broker, Broker::Start(path, 0600, core.get()));
    for (int i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(BrokerConnection c, ConnectBroker(path, absl::Seconds(5)));
      conns.push_back(std::move(c));
    }
    return absl::OkStatus();
  }
  // A page connection `owner` allocates on the broker: its id.
  absl::StatusOr<uint64_t> Page(int owner) {
    v1::BrokerRequest alloc;
    alloc.set_request_id(1);
    alloc.mutable_allocate()->mutable_desc()->set_size(4096);
    ASSIGN_OR_RETURN(Answer a, Ask(conns[owner].fd.get(), alloc));
    RETURN_IF_ERROR(ReplyStatus(a.reply));
    return a.reply.allocate().buffers(0).id();
  }
  // A read-write grant of `page` to this uid by `owner`'s session (through
  // the core, as the gRPC Share does).
  absl::StatusOr<v1::Grant> Share(int owner, uint64_t page) {
    ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                     core->Authenticate(conns[owner].welcome.session_token()));
    v1::ShareRequest share;
    share.set_buffer_id(page);
    share.mutable_peer()->set_uid(::getuid());
    share.set_cpu_access(v1::CPU_ACCESS_READ_WRITE);
    return core->Share(*session, share);
  }
  // `grant` imported on the broker by connection `importer` (a view).
  absl::Status Import(int importer, const v1::Grant& grant) {
    v1::BrokerRequest import;
    import.set_request_id(2);
    import.mutable_import_buffer()->set_grant_token(grant.token());
    ASSIGN_OR_RETURN(Answer a, Ask(conns[importer].fd.get(), import));
    return ReplyStatus(a.reply);
  }

  const std::string path;
  absl::Notification entered, open;
  RevokingBackend* backend = nullptr;
  std::unique_ptr<Allocator> core;
  std::unique_ptr<Broker> broker;
  std::vector<BrokerConnection> conns;
};

// A revoke on a backend that revokes live waits for the kernel to zap
// every mapping the grant's importers made, as many as they chose: it is
// made on a lane of its own, so that meanwhile the broker thread answers
// everyone else; a uid's revokes past its places there wait, unanswered,
// and are all made once there is room.
TEST_F(SlowLaneTest, ALiveRevokeDoesNotHoldUpOtherClients) {
  RevokingBroker rb(dir_.path());
  ASSERT_TRUE(rb.Start(3).ok());  // owner, importer, a bystander
  EXPECT_TRUE(rb.conns[0].welcome.live_revoke()) << "said before sharing";
  absl::Notification& entered = rb.entered;
  absl::Notification& open = rb.open;
  const int owner = rb.conns[0].fd.get();
  // The owner's page, shared kSlowLanePerUid + 2 times; the importer
  // imports the first grant (a view to cut off).
  absl::StatusOr<uint64_t> page = rb.Page(0);
  ASSERT_TRUE(page.ok()) << page.status();
  constexpr int kRevokes = static_cast<int>(Broker::kSlowLanePerUid) + 2;
  std::vector<v1::Grant> grants;
  for (int i = 0; i < kRevokes; ++i) {
    absl::StatusOr<v1::Grant> g = rb.Share(0, *page);
    ASSERT_TRUE(g.ok()) << g.status();
    grants.push_back(*std::move(g));
  }
  ASSERT_TRUE(rb.Import(1, grants[0]).ok());

  // The first revoke is cutting its view off (held here); the next three
  // wait on the lane, the last two find the uid's places taken.
  ASSERT_TRUE(
      SendRecord(owner, RevokeRequest(10, grants[0].id()).SerializeAsString(), {}, false).ok());
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  for (int i = 1; i < kRevokes; ++i) {
    ASSERT_TRUE(
        SendRecord(owner, RevokeRequest(10 + i, grants[i].id()).SerializeAsString(), {}, false)
            .ok());
  }
  size_t fds = 0;
  absl::Status s = AllocateOn(rb.conns[2].fd.get(), 4096, &fds);
  EXPECT_TRUE(s.ok()) << s << " (the broker thread waited for the revoke)";
  EXPECT_EQ(fds, 1u);
  EXPECT_FALSE(WaitReadable(owner, 100).ok()) << "a revoke answered before it was made";

  open.Notify();
  std::set<uint64_t> answered;
  for (int i = 0; i < kRevokes; ++i) {
    ASSERT_TRUE(WaitReadable(owner, 10000).ok()) << i;
    absl::StatusOr<Record> rec = ReceiveRecord(owner, false);
    ASSERT_TRUE(rec.ok()) << rec.status();
    v1::BrokerFrame frame;
    ASSERT_TRUE(frame.ParseFromString(rec->bytes) && frame.has_reply());
    EXPECT_TRUE(ReplyStatus(frame.reply()).ok()) << ReplyStatus(frame.reply());
    EXPECT_TRUE(frame.reply().has_revoke());
    answered.insert(frame.reply().request_id());
  }
  EXPECT_EQ(answered.size(), static_cast<size_t>(kRevokes));
  // Each grant is gone: its token imports no more.
  EXPECT_EQ(rb.Import(1, grants[kRevokes - 1]).code(), absl::StatusCode::kNotFound);
}

// A connection whose Revoke is on the lane is not read until it is made:
// its later requests are answered after it, as inline, and its end is seen
// after it. A review found the session closed first (the client gone, or
// timed out) and the queued revoke then refused ("session closed"), the
// importer's view never cut.
TEST_F(SlowLaneTest, ARevokeIsMadeBeforeItsConnectionsLaterRequestsAndItsEnd) {
  RevokingBroker rb(dir_.path());
  ASSERT_TRUE(rb.Start(3).ok());  // first owner, second owner, importer
  std::vector<BrokerConnection>& conns = rb.conns;
  // Each owner's page, shared and imported: view 1 (the first), view 2.
  std::vector<v1::Grant> grants;
  std::vector<uint64_t> pages;
  for (int owner = 0; owner < 2; ++owner) {
    absl::StatusOr<uint64_t> page = rb.Page(owner);
    ASSERT_TRUE(page.ok()) << page.status();
    pages.push_back(*page);
    absl::StatusOr<v1::Grant> g = rb.Share(owner, *page);
    ASSERT_TRUE(g.ok()) << g.status();
    grants.push_back(*g);
    ASSERT_TRUE(rb.Import(2, *g).ok());
  }
  // The first owner's revoke holds the lane; the second's waits behind it,
  // then that owner asks on and goes away.
  const int second = conns[1].fd.get();
  ASSERT_TRUE(SendRecord(conns[0].fd.get(), RevokeRequest(10, grants[0].id()).SerializeAsString(),
                         {}, false)
                  .ok());
  ASSERT_TRUE(rb.entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(
      SendRecord(second, RevokeRequest(11, grants[1].id()).SerializeAsString(), {}, false).ok());
  v1::BrokerRequest describe;
  describe.set_request_id(12);
  describe.mutable_describe()->set_buffer_id(pages[1]);
  ASSERT_TRUE(SendRecord(second, describe.SerializeAsString(), {}, false).ok());
  EXPECT_FALSE(WaitReadable(second, 200).ok()) << "answered before the revoke ahead of it";
  conns[1].fd.reset();
  // The broker has had its chance to see that end (it was ready before
  // this request was sent, so the round of events that serves the request
  // held it too, were the connection watched) once the request is answered.
  v1::BrokerRequest barrier;
  barrier.set_request_id(13);
  barrier.mutable_describe()->set_buffer_id(pages[0]);
  absl::StatusOr<Answer> seen = Ask(conns[2].fd.get(), barrier);
  ASSERT_TRUE(seen.ok()) << seen.status();
  rb.open.Notify();
  bool cut = false;
  for (int i = 0; i < 1000 && !cut; ++i) {
    const std::vector<uint64_t> r = rb.backend->revoked();
    cut = std::find(r.begin(), r.end(), uint64_t{2}) != r.end();
    if (!cut) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(cut) << "the revoke of the connection that went was not made";
}

}  // namespace
}  // namespace halloc
