// Module unload is refused while anything holds a halloc buffer (or a
// heap node) and succeeds once everything is gone; the module is loaded
// again afterwards so that the order of tests does not matter.
#include <errno.h>

#include <cstring>

#include "tests/kernel/guest_util.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

constexpr char kModule[] = "halloc_heap";

TEST(UnloadTest, RefusedWhileBuffersLiveSucceedsAfter) {
  const std::string ko = Env("HALLOC_KO");
  if (ko.empty()) GTEST_SKIP() << "HALLOC_KO not set (run through tools/kernel-test.sh)";
  ASSERT_TRUE(ModuleLoaded(kModule));
  {
    UniqueFd heap(open(HALLOC_HEAP_SYSTEM_PATH, O_RDWR | O_CLOEXEC));
    UniqueFd ctl(open(HALLOC_CONTROL_PATH, O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(heap.valid() && ctl.valid()) << strerror(errno);
    EXPECT_EQ(DeleteModule(kModule), -EWOULDBLOCK) << "open heap node";

    UniqueFd buf(HeapAlloc(heap.get(), 64 * 1024));
    ASSERT_TRUE(buf.valid());
    UniqueFd view(MakeView(ctl.get(), buf.get(), {}));
    ASSERT_TRUE(view.valid());
    heap.reset();
    ctl.reset();
    EXPECT_EQ(DeleteModule(kModule), -EWOULDBLOCK) << "buffer and view";

    buf.reset();
    EXPECT_EQ(DeleteModule(kModule), -EWOULDBLOCK) << "a view alone";

    Mapping m = Map(view.get(), 64 * 1024);
    ASSERT_TRUE(m.valid());
    view.reset();
    EXPECT_EQ(DeleteModule(kModule), -EWOULDBLOCK) << "a mapping alone";
    m.data()[0] = 1;  // still usable
    EXPECT_TRUE(ModuleLoaded(kModule));
  }
  ASSERT_EQ(DeleteModule(kModule), 0) << "nothing left";
  EXPECT_FALSE(ModuleLoaded(kModule));
  EXPECT_NE(access(HALLOC_HEAP_SYSTEM_PATH, F_OK), 0);

  ASSERT_EQ(LoadModule(ko, ""), 0) << "reload " << ko;
  UniqueFd heap(open(HALLOC_HEAP_SYSTEM_PATH, O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(heap.valid()) << strerror(errno);
  UniqueFd buf(HeapAlloc(heap.get(), 4096));
  EXPECT_TRUE(buf.valid()) << strerror(-buf.get());
}

}  // namespace
}  // namespace halloc_test
