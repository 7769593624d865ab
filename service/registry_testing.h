// The registry's tests' fixture: a registry with two sessions (kA, uid 1;
// kB, uid 2), one-page buffers, grants by uid, and imports noted as the
// allocator notes them. registry_test.cc, registry_revoke_test.cc and
// registry_references_test.cc.
#ifndef HALLOC_SERVICE_REGISTRY_TESTING_H_
#define HALLOC_SERVICE_REGISTRY_TESTING_H_

#include <sys/mman.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "service/registry.h"

namespace halloc {

inline constexpr uint64_t kPage = 4096;

inline Identity Uid(uid_t uid) {
  Identity id;
  id.uid = uid;
  id.pid = 100 + uid;
  id.exe = "/bin/test";
  return id;
}

inline std::shared_ptr<BufferRecord> Fresh(const std::string& key = "app/1",
                                           uint64_t size = kPage) {
  auto b = std::make_shared<BufferRecord>();
  b->name = "t";
  b->size = size;
  b->owner_uid = 1;
  b->owner_client = "app";
  b->charged_to = key;
  b->fd = UniqueFd(::memfd_create("registry_test", MFD_CLOEXEC));
  return b;
}

inline absl::Status NoQuota(uint64_t, uint64_t) { return absl::OkStatus(); }

class RegistryTest : public ::testing::Test {
 protected:
  explicit RegistryTest(uint64_t max_buffers_per_session = 4)
      : reg_("memfd", /*dma_bufs=*/false, max_buffers_per_session) {
    reg_.Join(kA, Uid(1));
    reg_.Join(kB, Uid(2));
  }

  // Adds `n` one-page buffers held by `session`; returns their ids.
  std::vector<uint64_t> AddN(uint64_t session, int n,
                             CpuAccess access = CpuAccess::kReadWrite) {
    std::vector<std::shared_ptr<BufferRecord>> fresh;
    for (int i = 0; i < n; ++i) fresh.push_back(Fresh());
    v1::AllocateResponse reply;
    absl::Status s = reg_.Add(session, fresh, access, NoQuota, &reply);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<uint64_t> ids;
    for (const auto& b : reply.buffers()) ids.push_back(b.id());
    return ids;
  }

  v1::StatsResponse Stats() {
    v1::StatsResponse s;
    reg_.FillStats(&s);
    return s;
  }

  GrantView ReadGrantForUid(uid_t uid) {
    GrantView g;
    g.peer_uid = uid;
    g.from_client = "app";
    g.from_uid = 1;
    g.access = CpuAccess::kRead;
    return g;
  }

  // `from` shares buffer `id` with `uid`, with CPU `access`.
  absl::StatusOr<v1::Grant> ShareTo(uint64_t from, uint64_t id, uid_t uid,
                                    CpuAccess access = CpuAccess::kRead) {
    GrantView g = ReadGrantForUid(uid);
    g.access = access;
    return reg_.Share(from, id, [&](CpuAccess) { return g; });
  }

  // `from` shares buffer `id` with `uid`, and session `importer` imports
  // it as on a backend without live revoke (no view noted): the grant.
  absl::StatusOr<v1::Grant> ShareAndImport(uint64_t from, uint64_t id, uid_t uid,
                                           uint64_t importer) {
    absl::StatusOr<v1::Grant> g = ShareTo(from, id, uid);
    if (!g.ok()) return g.status();
    absl::StatusOr<Registry::Imported> i = reg_.Import(importer, g->token(), Accept);
    if (!i.ok()) return i.status();
    return g;
  }

  // `from` shares buffer `id` with `uid` until refused or `most` times:
  // how many it made, and the refusal (OK if none).
  size_t ShareUntilRefused(uint64_t from, uint64_t id, uid_t uid, size_t most,
                           absl::Status* refused) {
    for (size_t made = 0; made < most; ++made) {
      absl::StatusOr<v1::Grant> g = ShareTo(from, id, uid);
      if (!g.ok()) {
        *refused = g.status();
        return made;
      }
    }
    return most;
  }

  // A's new buffer reaches B by two grants, a read one (imported at
  // `through_read`, views `view`) and a read-write one (view `view` + 1);
  // C (session kC, uid 3) joins.
  static constexpr uint64_t kC = 30;
  struct TwoRoutes {
    uint64_t id = 0;
    v1::Grant read, rw;
  };
  TwoRoutes TwoRoutesToB(CpuAccess through_read, uint64_t view) {
    reg_.Join(kC, Uid(3));
    TwoRoutes t;
    t.id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> read = ShareTo(kA, t.id, 2);
    absl::StatusOr<v1::Grant> rw = ShareTo(kA, t.id, 2, CpuAccess::kReadWrite);
    EXPECT_TRUE(read.ok() && rw.ok());
    if (!read.ok() || !rw.ok()) return t;
    t.read = *read;
    t.rw = *rw;
    EXPECT_TRUE(ImportView(kB, t.read, t.id, through_read, view));
    EXPECT_TRUE(ImportView(kB, t.rw, t.id, CpuAccess::kReadWrite, view + 1));
    return t;
  }

  // A's new buffer goes on from B: B imports it through A's grant to uid 2
  // (view 701) and shares it on to uid 3 (C: session kC, joined here),
  // which imports it (view 702) when `c_imports`.
  struct Onward {
    uint64_t id = 0;
    v1::Grant to_b, b_to_c;
  };
  Onward OnwardToC(bool c_imports = true) {
    reg_.Join(kC, Uid(3));
    Onward o;
    o.id = AddN(kA, 1)[0];
    absl::StatusOr<v1::Grant> to_b = ShareTo(kA, o.id, 2);
    EXPECT_TRUE(to_b.ok()) << to_b.status();
    if (!to_b.ok()) return o;
    o.to_b = *to_b;
    EXPECT_TRUE(ImportView(kB, o.to_b, o.id, CpuAccess::kRead, 701));
    absl::StatusOr<v1::Grant> b_to_c = ShareTo(kB, o.id, 3);
    EXPECT_TRUE(b_to_c.ok()) << b_to_c.status();
    if (!b_to_c.ok()) return o;
    o.b_to_c = *b_to_c;
    if (c_imports) {
      EXPECT_TRUE(ImportView(kC, o.b_to_c, o.id, CpuAccess::kRead, 702));
    }
    return o;
  }

  // What a receiver accepts: the grant's terms as they are.
  static absl::StatusOr<CpuAccess> Accept(const GrantView& g) { return g.access; }
  // `session` imports `grant` and its view `view_id` (of `access`) is
  // noted, as the allocator does once it delivered it.
  ::testing::AssertionResult ImportView(uint64_t session, const v1::Grant& grant,
                                        uint64_t buffer_id, CpuAccess access,
                                        uint64_t view_id) {
    absl::StatusOr<Registry::Imported> i = reg_.Import(session, grant.token(), Accept);
    if (!i.ok()) return ::testing::AssertionFailure() << "Import: " << i.status();
    if (absl::Status s = reg_.AddImportView(session, grant.id(), buffer_id, access, view_id);
        !s.ok()) {
      return ::testing::AssertionFailure() << "AddImportView: " << s;
    }
    reg_.SettleImport(session, buffer_id, i->generation, true);
    return ::testing::AssertionSuccess();
  }

  static constexpr uint64_t kA = 10, kB = 20;
  Registry reg_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_REGISTRY_TESTING_H_
