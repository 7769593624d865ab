// halloc-protected: buffers no CPU may touch (user space or kernel), that
// devices still import; views can never add CPU access.
#include <errno.h>
#include <sys/mman.h>
#include <xf86drm.h>

#include <cstring>

#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

constexpr size_t kSize = 256 * 1024;

class ProtectedTest : public HallocTest {};

TEST_F(ProtectedTest, NoCpuAccessFromTheFirstFdOn) {
  UniqueFd buf = Alloc(Heap::kProtected, kSize);
  ASSERT_TRUE(buf.valid());
  const halloc_buffer_info info = InfoOf(buf.get());
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_NONE);
  EXPECT_NE(info.flags & HALLOC_INFO_PROTECTED, 0u);
  EXPECT_EQ(info.flags & HALLOC_INFO_IS_VIEW, 0u);
  EXPECT_STREQ(info.heap, HALLOC_HEAP_PROTECTED);
  errno = 0;
  EXPECT_FALSE(Map(buf.get(), kSize, PROT_READ).valid());
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(Sync(buf.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ), -EPERM);
  EXPECT_EQ(Sync(buf.get(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
  // Other heaps are unaffected.
  UniqueFd plain = Alloc(Heap::kSystem, kSize);
  ASSERT_TRUE(plain.valid());
  EXPECT_EQ(InfoOf(plain.get()).flags & HALLOC_INFO_PROTECTED, 0u);
  EXPECT_TRUE(Map(plain.get(), kSize, PROT_READ | PROT_WRITE).valid());
}

TEST_F(ProtectedTest, ViewsCannotAddCpuAccess) {
  UniqueFd buf = Alloc(Heap::kProtected, kSize);
  ASSERT_TRUE(buf.valid());
  for (uint32_t cpu : {uint32_t(HALLOC_CPU_READ), uint32_t(HALLOC_CPU_READ_WRITE)}) {
    ViewSpec spec;
    spec.cpu = cpu;
    EXPECT_EQ(MakeView(ctl_.get(), buf.get(), spec), -EPERM) << cpu;
  }
  ViewSpec none;
  none.cpu = HALLOC_CPU_NONE;
  none.restrict_attach = true;
  none.drivers = {"vgem"};
  UniqueFd view(MakeView(ctl_.get(), buf.get(), none));
  ASSERT_TRUE(view.valid()) << strerror(-view.get());
  const halloc_buffer_info info = InfoOf(view.get());
  EXPECT_NE(info.flags & HALLOC_INFO_PROTECTED, 0u);
  EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
  EXPECT_FALSE(Map(view.get(), kSize, PROT_READ).valid());
}

// Devices still import it.
TEST_F(VgemTest, ImportsAProtectedBuffer) {
  UniqueFd buf = Alloc(Heap::kProtected, kSize);
  ASSERT_TRUE(buf.valid());
  const int64_t h = Import(vgem_.get(), buf.get());
  ASSERT_GT(h, 0) << strerror(int(-h));
  GemHandle handle(vgem_.get(), uint32_t(h));
  EXPECT_EQ(InfoOf(buf.get()).attachments, 1u);
}

}  // namespace
}  // namespace halloc_test
