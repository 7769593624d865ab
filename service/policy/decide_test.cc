#include "service/policy/decide.h"

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::absl::StatusCode;

// camera (uid 1001) shares with compositor (uid 1002, read at most); app
// (uid 1003) may share within its uid; nobody else matches.
std::shared_ptr<const Policy> Example() {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(R"(
    clients {
      name: "camera" match { uids: 1001 }
      usages: "camera_output" usages: "cpu_write_often" heaps: "memfd"
      max_buffer_bytes: 1048576 quota_buffers: 4 quota_bytes: 2097152
      max_cpu_access: CPU_ACCESS_READ_WRITE attach_devices: "vivid"
      share_to: "compositor" receive_from: "compositor"
    }
    clients {
      name: "compositor" match { uids: 1002 }
      usages: "gpu_texture" usages: "cpu_read_often" heaps: "*"
      max_cpu_access: CPU_ACCESS_READ attach_devices: "*"
      share_to: "camera" receive_from: "camera"
    }
    clients {
      name: "app" match { uids: 1003 }
      usages: "*" heaps: "*" max_cpu_access: CPU_ACCESS_READ_WRITE
      share_to: "@same_uid" receive_from: "@same_uid"
    }
  )", "decide_test");
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

Identity Uid(uid_t uid) { return {uid, uid, 1, "", std::nullopt}; }

uint64_t Usage(const char* names) { return *usage::Parse(names); }

TEST(DecideAllocateTest, GrantsWithinTheRuleAndSaysWhatToApply) {
  auto p = Example();
  absl::StatusOr<AllocateDecision> d = DecideAllocate(
      *p, Uid(1001), {Usage("camera_output,cpu_write_often"), 65536, "memfd", CpuAccess::kReadWrite});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->rule->name, "camera");
  EXPECT_EQ(d->owner_access, CpuAccess::kReadWrite);
  EXPECT_EQ(d->quota_key, "camera/1001");
  ASSERT_TRUE(d->attach.has_value());
  EXPECT_EQ(*d->attach, std::vector<std::string>{"vivid"});
  EXPECT_TRUE(d->charge_until_gone) << "camera has quotas";
  // "*" admits any device.
  d = DecideAllocate(*p, Uid(1002), {Usage("gpu_texture"), 4096, "halloc", CpuAccess::kRead});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->attach.has_value());
  EXPECT_EQ(d->owner_access, CpuAccess::kRead);
  EXPECT_FALSE(d->charge_until_gone) << "compositor has no quota to keep";
}

TEST(DecideAllocateTest, EachRefusalNamesItsRule) {
  auto p = Example();
  struct Case {
    uid_t uid;
    AllocateAsk ask;
    const char* why;
    const char* rule;
  } cases[] = {
      {1001, {Usage("gpu_texture"), 4096, "memfd"}, "not granted", "camera"},
      {1001, {Usage("camera_output"), 4096, "halloc"}, "heap 'halloc'", "camera"},
      {1001, {Usage("camera_output"), 2 << 20, "memfd"}, "max_buffer_bytes", "camera"},
      {1002, {Usage("gpu_texture,cpu_write_often"), 4096, "memfd"}, "not granted", "compositor"},
      {4242, {0, 4096, "memfd"}, "default deny", "(no rule)"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AllocateDecision> d = DecideAllocate(*p, Uid(c.uid), c.ask);
    ASSERT_FALSE(d.ok()) << c.why;
    EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied);
    EXPECT_TRUE(absl::StrContains(d.status().message(), c.why)) << d.status();
    EXPECT_EQ(DecidingRule(d.status()), c.rule);
  }
  EXPECT_EQ(DecidingRule(absl::InvalidArgumentError("x")), "");
}

// A refusal by no rule says the caller's executable was not verified only
// where that could matter: under a policy with a rule that names one.
TEST(DecideAllocateTest, NoRuleSaysTheExecutableWasNotVerifiedOnlyWhereARuleNamesOne) {
  const Identity unverified{4242, 4242, 1, "/usr/bin/viewer", std::nullopt};
  absl::StatusOr<AllocateDecision> d = DecideAllocate(*Example(), unverified, {0, 4096, "memfd"});
  ASSERT_EQ(d.status().code(), StatusCode::kPermissionDenied) << d.status();
  EXPECT_TRUE(absl::StrContains(d.status().message(), "exe '/usr/bin/viewer' (default deny)"))
      << d.status();
  absl::StatusOr<std::shared_ptr<const Policy>> with_exe = Policy::Parse(
      "clients { name: \"viewer\" match { exe: \"/usr/bin/viewer\" } }", "decide_test");
  ASSERT_TRUE(with_exe.ok()) << with_exe.status();
  d = DecideAllocate(**with_exe, unverified, {0, 4096, "memfd"});
  ASSERT_EQ(d.status().code(), StatusCode::kPermissionDenied) << d.status();
  EXPECT_TRUE(absl::StrContains(d.status().message(),
                                "exe '/usr/bin/viewer' (executable not verified) (default deny)"))
      << d.status();
}

// An Allocate held in another session's name: within that session's rule,
// narrowed where the usage leaves room, refused by that rule where it asks
// for more; a session no rule matches may hold nothing of another's.
TEST(DecideHeldTest, TheHoldersRuleCapsWhatAnotherRulesAllocateGivesIt) {
  auto p = Example();
  const Rule* app = p->Match(Uid(1003));
  const Rule* compositor = p->Match(Uid(1002));
  ASSERT_NE(app, nullptr);
  ASSERT_NE(compositor, nullptr);
  auto held = [&](const Rule* rule, uid_t uid, const char* usage,
                  CpuAccess access) -> absl::StatusOr<CpuAccess> {
    const Identity holder = Uid(uid);
    absl::StatusOr<AllocateDecision> d = DecideAllocate(
        *app, Uid(1003), {Usage(usage), 4096, "memfd", access, 1, 4096}, HeldBy{rule, &holder});
    if (!d.ok()) return d.status();
    return d->owner_access;
  };
  absl::StatusOr<CpuAccess> got = held(compositor, 1002, "gpu_texture", CpuAccess::kReadWrite);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, CpuAccess::kRead);
  got = held(compositor, 1002, "cpu_write_often", CpuAccess::kReadWrite);
  EXPECT_EQ(got.status().code(), StatusCode::kPermissionDenied) << got.status();
  EXPECT_EQ(DecidingRule(got.status()), "compositor");
  for (const char* usage : {"cpu_read_often", "gpu_texture"}) {
    got = held(nullptr, 1004, usage, CpuAccess::kRead);
    EXPECT_EQ(got.status().code(), StatusCode::kPermissionDenied) << got.status();
    EXPECT_EQ(DecidingRule(got.status()), "(no rule)");
    EXPECT_TRUE(absl::StrContains(got.status().message(), "no rule matches it")) << got.status();
  }
}

// The session holding another's Allocate pays for it, under its own rule:
// on the key its own Allocates charge, within its quota, never on a key
// made of the caller's rule and the holder's uid (a quota of nobody's
// own), and the caller's quota, which is not charged, does not refuse it.
TEST(DecideHeldTest, TheHolderPaysUnderItsOwnRule) {
  auto p = Example();
  const Rule* camera = p->Match(Uid(1001));
  const Rule* app = p->Match(Uid(1003));
  ASSERT_NE(camera, nullptr);
  const AllocateAsk ask{Usage("cpu_write_often"), 4096, "memfd", CpuAccess::kReadWrite, 1, 4096};
  Identity sender = Uid(1003);
  sender.account_uid = 1001;  // on camera's broker socket: the connection's uid
  const Identity cam = Uid(1001);
  absl::StatusOr<AllocateDecision> d = DecideAllocate(*app, sender, ask);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->quota_key, "app/1001") << "the caller's rule alone: a key of nobody's";
  EXPECT_FALSE(d->charge_until_gone) << "app has no quota";
  d = DecideAllocate(*app, sender, ask, HeldBy{camera, &cam});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->quota_key, "camera/1001");
  EXPECT_EQ(d->quota_rule, camera);
  EXPECT_EQ(d->quota_uid, 1001u);
  EXPECT_TRUE(d->charge_until_gone) << "camera has quotas";
  EXPECT_EQ(d->rule->name, "app") << "the caller's rule still judged the rest";
  // More than the holder's whole quota in one call: no release makes room.
  AllocateAsk five = ask;
  five.count = 5;
  d = DecideAllocate(*app, sender, five, HeldBy{camera, &cam});
  EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied) << d.status();
  EXPECT_EQ(DecidingRule(d.status()), "camera");
  EXPECT_TRUE(absl::StrContains(d.status().message(), "quota_buffers 4")) << d.status();
  // The other way round: camera (quota 4) sends five on app's socket (no
  // quota), which pays: not refused by camera's quota, never charged.
  const AllocateAsk cam_five{Usage("camera_output"), 4096, "memfd", CpuAccess::kReadWrite, 5, 4096};
  EXPECT_EQ(DecideAllocate(*camera, cam, cam_five).status().code(), StatusCode::kPermissionDenied)
      << "its own socket: its own quota";
  const Identity a = Uid(1003);
  d = DecideAllocate(*camera, cam, cam_five, HeldBy{app, &a});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->quota_key, "app/1003");
}

TEST(CheckQuotaTest, CountsBuffersAndBytesOfTheClient) {
  auto p = Example();
  const Rule& camera = *p->Find("camera");
  EXPECT_TRUE(CheckQuota(camera, 1001, 3, 1 << 20, 1, 1 << 20).ok());
  absl::Status s = CheckQuota(camera, 1001, 4, 0, 1, 4096);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "quota_buffers 4")) << s;
  EXPECT_EQ(DecidingRule(s), "camera");
  s = CheckQuota(camera, 1001, 1, 2 << 20, 1, 1);
  EXPECT_TRUE(absl::StrContains(s.message(), "quota_bytes")) << s;
  EXPECT_TRUE(CheckQuota(*p->Find("app"), 1003, 1u << 30, 1u << 30, 64, 1u << 30).ok());
}

// A call that alone asks for more than the rule's whole quota is the
// rule's refusal (PERMISSION_DENIED), not RESOURCE_EXHAUSTED, which says a
// release could make room; up to the quota it is CheckQuota's to judge.
TEST(DecideAllocateTest, MoreThanTheWholeQuotaInOneCallIsDenied) {
  auto p = Example();
  const AllocateAsk base{Usage("camera_output"), 4096, "memfd", CpuAccess::kReadWrite};
  AllocateAsk ask = base;
  ask.count = 4;
  ask.charged_size = 512 << 10;  // 2 MiB in all: the quota exactly
  EXPECT_TRUE(DecideAllocate(*p, Uid(1001), ask).ok());
  ask.count = 5;
  ask.charged_size = 4096;
  absl::StatusOr<AllocateDecision> d = DecideAllocate(*p, Uid(1001), ask);
  EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied) << d.status();
  EXPECT_TRUE(absl::StrContains(d.status().message(), "exceed quota_buffers 4")) << d.status();
  EXPECT_EQ(DecidingRule(d.status()), "camera");
  ask.count = 3;
  ask.charged_size = (1 << 20) - 4096 + 8192;  // 3 of them: past 2 MiB
  d = DecideAllocate(*p, Uid(1001), ask);
  EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied) << d.status();
  EXPECT_TRUE(absl::StrContains(d.status().message(), "exceed quota_bytes 2097152")) << d.status();
  // No quota, no such bound.
  ask.count = 64;
  ask.charged_size = 1u << 30;
  EXPECT_TRUE(DecideAllocate(*p, Uid(1003), ask).ok());
}

TEST(DecideShareTest, PeersByNameAndUidFollowShareTo) {
  auto p = Example();
  absl::StatusOr<SharePeerDecision> to =
      DecideSharePeer(*p, Uid(1001), {std::string("compositor"), 0}, 7);
  ASSERT_TRUE(to.ok()) << to.status();
  EXPECT_EQ(to->receiver->name, "compositor");
  // By uid: admitted through the named rule's uids.
  to = DecideSharePeer(*p, Uid(1001), {std::nullopt, 1002}, 7);
  ASSERT_TRUE(to.ok()) << to.status();
  EXPECT_EQ(to->receiver, nullptr);
  to = DecideSharePeer(*p, Uid(1001), {std::string("app"), 0}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(DecidingRule(to.status()), "camera");
  // A name share_to does not admit is refused the same whether a rule has
  // it ("app") or not: the answer does not list the policy's clients.
  const absl::Status app = to.status();
  to = DecideSharePeer(*p, Uid(1001), {std::string("nosuch\nline"), 0}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kPermissionDenied);
  EXPECT_FALSE(absl::StrContains(to.status().message(), "\n"));
  EXPECT_EQ(std::string(to.status().message()),
            absl::StrReplaceAll(app.message(), {{"'app'", "'nosuch\\nline'"}}));
  EXPECT_FALSE(absl::StrContains(to.status().message(), p->source())) << to.status();
  // @same_uid
  EXPECT_TRUE(DecideSharePeer(*p, Uid(1003), {std::nullopt, 1003}, 7).ok());
  EXPECT_FALSE(DecideSharePeer(*p, Uid(1003), {std::nullopt, 1004}, 7).ok());
}

// A peer name longer than any client's is INVALID_ARGUMENT, before any rule
// is looked at; escaped whole into a refusal, 60,000 bytes of it made a
// ~240 KB answer (too large for a broker record: never sent) and an AUDIT
// line as long. A caller no rule matches sees its executable cut.
TEST(DecideShareTest, AnOverlongPeerNameIsABadArgumentAndLongTextIsCut) {
  auto p = Example();
  const std::string longest(kMaxClientNameBytes, 'a');
  absl::StatusOr<SharePeerDecision> to = DecideSharePeer(*p, Uid(1001), {longest, 0}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kPermissionDenied) << "a name a rule could have";
  to = DecideSharePeer(*p, Uid(1001), {longest + "a", 0}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kInvalidArgument) << to.status();
  to = DecideSharePeer(*p, Uid(4242), {std::string(60000, '\xff'), 0}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kInvalidArgument) << "even with no rule";
  EXPECT_LT(to.status().message().size(), 100u);
  Identity stranger = Uid(4242);
  stranger.exe = "/" + std::string(4000, '\xff');
  to = DecideSharePeer(*p, stranger, {std::nullopt, 1002}, 7);
  EXPECT_EQ(to.status().code(), StatusCode::kPermissionDenied);
  EXPECT_LT(to.status().message().size(), 1500u) << to.status().message().size();
  EXPECT_TRUE(absl::StrContains(to.status().message(), "(4001 bytes)")) << to.status();
}

TEST(DecideShareTest, RightsNeverWidenAndExplicitOnesAreNotNarrowedSilently) {
  auto p = Example();
  SharePeerDecision to = *DecideSharePeer(*p, Uid(1001), {std::string("compositor"), 0}, 7);
  // Unspecified: mine, narrowed to what the receiver may hold.
  EXPECT_EQ(*DecideShareRights(to, 7, CpuAccess::kReadWrite, std::nullopt), CpuAccess::kRead);
  // Explicit beyond the receiver: refused.
  absl::StatusOr<CpuAccess> r = DecideShareRights(to, 7, CpuAccess::kReadWrite, CpuAccess::kReadWrite);
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied);
  // Beyond the caller's own: refused.
  r = DecideShareRights(to, 7, CpuAccess::kRead, CpuAccess::kReadWrite);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "caller's own")) << r.status();
  // A uid peer's rule is judged at Import.
  SharePeerDecision by_uid = *DecideSharePeer(*p, Uid(1001), {std::nullopt, 1002}, 7);
  EXPECT_EQ(*DecideShareRights(by_uid, 7, CpuAccess::kReadWrite, CpuAccess::kReadWrite),
            CpuAccess::kReadWrite);
}

TEST(DecideImportTest, TheGrantMustBeForTheCallerFromAnAdmittedSender) {
  auto p = Example();
  GrantView g{9, 7, "compositor", 0, "camera", 1001, CpuAccess::kRead, false};
  absl::StatusOr<ImportDecision> d = DecideImport(*p, Uid(1002), g);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->access, CpuAccess::kRead);
  EXPECT_EQ(DecideImport(*p, Uid(1003), g).status().code(), StatusCode::kPermissionDenied);
  // From a client the receiver does not receive from.
  g.from_client = "app";
  d = DecideImport(*p, Uid(1002), g);
  EXPECT_TRUE(absl::StrContains(d.status().message(), "receive_from")) << d.status();
  EXPECT_EQ(DecidingRule(d.status()), "compositor");
  // By uid, asking read-write explicitly for a receiver capped at read.
  GrantView by_uid{9, 7, "", 1002, "camera", 1001, CpuAccess::kReadWrite, true};
  d = DecideImport(*p, Uid(1002), by_uid);
  EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied);
  by_uid.explicit_access = false;  // unspecified: narrowed
  d = DecideImport(*p, Uid(1002), by_uid);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->access, CpuAccess::kRead);
}

// The sharer's side, judged at each Import: share_to under the policy in
// force, and a grant to a uid reaches only the client share_to named.
TEST(DecideImportTest, TheSharersShareToAdmitsTheImporterNow) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(R"(
    clients { name: "camera" match { uids: 1001 } share_to: "compositor" }
    clients { name: "compositor" match { uids: 1002 gids: 44 } receive_from: "*" }
    clients { name: "other" match { uids: 1002 } receive_from: "*" }
  )", "decide_test");
  ASSERT_TRUE(p.ok()) << p.status();
  // Made for uid 1002, admitted at Share through the compositor's uids.
  ASSERT_TRUE(DecideSharePeer(**p, Uid(1001), {std::nullopt, 1002}, 7).ok());
  GrantView g{9, 7, "", 1002, "camera", 1001, CpuAccess::kRead, false, Uid(1001)};
  absl::StatusOr<const Rule*> sharer = DecideGrantSharer(**p, {1002, 44, 1, "", std::nullopt}, g);
  ASSERT_TRUE(sharer.ok()) << sharer.status();
  EXPECT_EQ((*sharer)->name, "camera");
  // Another process of that uid, which is not the compositor.
  sharer = DecideGrantSharer(**p, Uid(1002), g);
  EXPECT_EQ(sharer.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(DecidingRule(sharer.status()), "camera");
  EXPECT_TRUE(absl::StrContains(sharer.status().message(), "client 'other'")) << sharer.status();
  // A policy whose camera no longer shares with the compositor.
  absl::StatusOr<std::shared_ptr<const Policy>> later = Policy::Parse(R"(
    clients { name: "camera" match { uids: 1001 } }
    clients { name: "compositor" match { uids: 1002 gids: 44 } receive_from: "*" }
  )", "decide_test");
  ASSERT_TRUE(later.ok()) << later.status();
  g.peer_uid = 0;
  g.peer_name = "compositor";
  EXPECT_EQ(DecideGrantSharer(**later, {1002, 44, 1, "", std::nullopt}, g).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_TRUE(DecideGrantSharer(**p, {1002, 44, 1, "", std::nullopt}, g).ok());
  // A policy without the client the grant names: refused, not "not found"
  // (the grant exists).
  absl::StatusOr<std::shared_ptr<const Policy>> without = Policy::Parse(R"(
    clients { name: "camera" match { uids: 1001 } share_to: "*" }
  )",
                                                                        "decide_test");
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(DecideGrantSharer(**without, Uid(1002), g).status().code(),
            StatusCode::kPermissionDenied);
}

// A sharer no rule matches any more (a reload): the importer, maybe
// another user, was told the sharer's uid, gid and executable (the "no
// rule" refusal, written for the sharer itself), counted as "(no rule)".
TEST(DecideImportTest, ASharerWithoutARuleIsNotDescribedToTheImporter) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Parse(R"(
    clients { name: "compositor" match { uids: 1002 } receive_from: "*" }
  )",
                                                                  "decide_test");
  ASSERT_TRUE(p.ok()) << p.status();
  Identity sharer{1001, 77, 1, "/opt/secret/camera-daemon", std::nullopt};
  GrantView g{9, 7, "", 1002, "camera", 1001, CpuAccess::kRead, false, sharer};
  const absl::Status s = DecideGrantSharer(**p, Uid(1002), g).status();
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(DecidingRule(s), "(sharer has no rule)");
  EXPECT_TRUE(absl::StrContains(s.message(), "grant 9")) << s;
  for (const char* told : {"1001", "77", "secret"}) {
    EXPECT_FALSE(absl::StrContains(s.message(), told)) << s;
  }
}

TEST(QuotaKeyTest, SplitsWhatItMakes) {
  EXPECT_EQ(QuotaKey("camera", 1000), "camera/1000");
  EXPECT_EQ(SplitQuotaKey(QuotaKey("camera", 1000)),
            (std::pair<std::string, uint32_t>{"camera", 1000}));
  EXPECT_EQ(SplitQuotaKey("no-uid"), (std::pair<std::string, uint32_t>{"no-uid", 0}));
  EXPECT_EQ(SplitQuotaKey("a/b/7"), (std::pair<std::string, uint32_t>{"a/b", 7}));
}

}  // namespace
}  // namespace halloc
