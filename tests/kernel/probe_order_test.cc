// --backend=auto on real kernels: the first that works of halloc, dmaheap,
// udmabuf, memfd. The guest has no upstream dma-heap (Debian's 6.1 lacks
// CONFIG_DMABUF_HEAPS), so dmaheap works only on the module's own nodes;
// unloading halloc_heap.ko and udmabuf.ko in turn walks auto down the list.
// Both modules are loaded again afterwards, whatever happened.
#include <errno.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "service/backend/dmaheap_backend.h"
#include "service/backend/registry.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

// The backend auto picks, or its error.
std::string AutoPicks() {
  absl::StatusOr<std::unique_ptr<halloc::Backend>> b = halloc::CreateBackend("auto");
  return b.ok() ? std::string((*b)->name()) : b.status().ToString();
}

// Reloads whichever of the two modules is missing when the test ends.
class ModulesBack {
 public:
  ModulesBack(std::string halloc_ko, std::string udmabuf_ko)
      : halloc_ko_(std::move(halloc_ko)), udmabuf_ko_(std::move(udmabuf_ko)) {}
  ~ModulesBack() {
    if (!ModuleLoaded("halloc_heap")) {
      EXPECT_EQ(LoadModule(halloc_ko_, ""), 0) << "reload " << halloc_ko_;
    }
    if (!ModuleLoaded("udmabuf")) {
      EXPECT_EQ(LoadModule(udmabuf_ko_, ""), 0) << "reload " << udmabuf_ko_;
    }
  }

 private:
  const std::string halloc_ko_, udmabuf_ko_;
};

TEST(ProbeOrderTest, AutoWalksHallocDmaheapUdmabufMemfd) {
  const std::string halloc_ko = Env("HALLOC_KO");
  const std::string udmabuf_ko = Env("UDMABUF_KO");
  if (halloc_ko.empty() || udmabuf_ko.empty()) {
    GTEST_SKIP() << "HALLOC_KO or UDMABUF_KO not set (run through tools/kernel-test.sh)";
  }
  ASSERT_TRUE(ModuleLoaded("halloc_heap"));
  ASSERT_TRUE(ModuleLoaded("udmabuf"));
  ModulesBack restore(halloc_ko, udmabuf_ko);

  EXPECT_EQ(AutoPicks(), "halloc");
  {
    // Without a name, dmaheap takes the module's general heap, never its
    // contiguous or protected one.
    absl::StatusOr<std::unique_ptr<halloc::DmaHeapBackend>> d = halloc::DmaHeapBackend::Create();
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ((*d)->heap(), HALLOC_HEAP_SYSTEM);
  }

  ASSERT_EQ(DeleteModule("halloc_heap"), 0) << "a test before left a halloc buffer open";
  EXPECT_EQ(halloc::CreateBackend("halloc").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(halloc::CreateBackend("dmaheap").status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "no heap node left in /dev/dma_heap";
  EXPECT_EQ(AutoPicks(), "udmabuf");

  ASSERT_EQ(DeleteModule("udmabuf"), 0) << "a test before left a udmabuf open";
  EXPECT_EQ(halloc::CreateBackend("udmabuf").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(AutoPicks(), "memfd");

  ASSERT_EQ(LoadModule(udmabuf_ko, ""), 0) << "reload " << udmabuf_ko;
  EXPECT_EQ(AutoPicks(), "udmabuf");
  ASSERT_EQ(LoadModule(halloc_ko, ""), 0) << "reload " << halloc_ko;
  EXPECT_EQ(AutoPicks(), "halloc");
}

// What CreateBackend("auto") gives with `skip_closed_nodes` when it opens
// the nodes as `id` (uid and gid): the backend's name, or the status. Only
// this thread's filesystem ids change (setfsuid, which also drops the
// capabilities that pass file modes); no other thread sees it, and no fork
// of this threaded process is needed.
std::string AutoAs(unsigned id, bool skip_closed_nodes, absl::StatusCode* code) {
  setfsgid(id);
  setfsuid(id);
  absl::StatusOr<std::unique_ptr<halloc::Backend>> b =
      halloc::CreateBackend("auto", {"", skip_closed_nodes});
  setfsuid(0);
  setfsgid(0);
  *code = b.status().code();
  return b.ok() ? std::string((*b)->name()) : b.status().ToString();
}

// A hallocd not root (the unit's user, before the udev rule gave it the
// nodes) finds the module's nodes closed: auto passes over them when told to
// skip them (a user's own hallocd), and stops on them otherwise (the unit:
// --skip_closed_nodes=false), where it used to fall to memfd unsaid.
TEST(ProbeOrderTest, ClosedNodesStopAutoWhenNotSkipped) {
  if (Env("HALLOC_KO").empty())
    GTEST_SKIP() << "HALLOC_KO not set (run through tools/kernel-test.sh)";
  ASSERT_TRUE(ModuleLoaded("halloc_heap"));
  struct stat st;
  ASSERT_EQ(stat(HALLOC_HEAP_SYSTEM_PATH, &st), 0);
  ASSERT_EQ(st.st_mode & 0077, 0u) << "the heap node is open to others here";
  constexpr unsigned kUser = 4243;
  absl::StatusCode code;
  EXPECT_EQ(AutoAs(kUser, /*skip_closed_nodes=*/true, &code), "memfd");
  const std::string said = AutoAs(kUser, /*skip_closed_nodes=*/false, &code);
  EXPECT_EQ(code, absl::StatusCode::kPermissionDenied) << said;
  EXPECT_THAT(said, ::testing::HasSubstr(HALLOC_HEAP_SYSTEM_PATH));
  // Given to the user's group, as the udev rule gives them to hallocd's,
  // the nodes serve it.
  {
    NodesToGroup given(kUser);
    ASSERT_TRUE(given.ok());
    EXPECT_EQ(AutoAs(kUser, /*skip_closed_nodes=*/false, &code), "halloc");
  }
  {
    // An optional heap's node left closed stops the unit's hallocd (it
    // would drop that heap unsaid); a user's keeps the module's other heaps
    // rather than fall to a backend that enforces less.
    NodesToGroup given(kUser, {HALLOC_HEAP_PROTECTED_PATH});
    ASSERT_TRUE(given.ok());
    const std::string why = AutoAs(kUser, /*skip_closed_nodes=*/false, &code);
    EXPECT_EQ(code, absl::StatusCode::kPermissionDenied) << why;
    EXPECT_THAT(why, ::testing::HasSubstr(HALLOC_HEAP_PROTECTED_PATH));
    EXPECT_EQ(AutoAs(kUser, /*skip_closed_nodes=*/true, &code), "halloc");
  }
  EXPECT_EQ(AutoAs(kUser, /*skip_closed_nodes=*/true, &code), "memfd") << "the modes came back";
}

}  // namespace
}  // namespace halloc_test
