#include "clients/cpp/halloc/base/rights.h"

#include <linux/dma-buf.h>
#include <sys/mman.h>

#include "gtest/gtest.h"
#include "kernel/uapi/halloc_heap.h"

namespace halloc {
namespace {

constexpr CpuAccess kAll[] = {CpuAccess::kNone, CpuAccess::kRead, CpuAccess::kReadWrite};

TEST(RightsTest, EveryVocabularyRoundTrips) {
  for (CpuAccess a : kAll) {
    SCOPED_TRACE(CpuAccessName(a));
    absl::StatusOr<CpuAccess> back = FromProto(ToProto(a));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, a);
    back = FromKernel(ToKernel(a));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, a);
  }
  for (v1::CpuAccess p : {v1::CPU_ACCESS_NONE, v1::CPU_ACCESS_READ, v1::CPU_ACCESS_READ_WRITE}) {
    EXPECT_EQ(ToProto(*FromProto(p)), p);
  }
  for (uint32_t k : {HALLOC_CPU_NONE, HALLOC_CPU_READ, HALLOC_CPU_READ_WRITE}) {
    EXPECT_EQ(ToKernel(*FromKernel(k)), k);
  }
}

TEST(RightsTest, OrderIsTheSameInEveryVocabulary) {
  for (CpuAccess a : kAll) {
    for (CpuAccess b : kAll) {
      EXPECT_EQ(Wider(a, b), ToKernel(a) > ToKernel(b));
      EXPECT_EQ(Wider(a, b), static_cast<int>(ToProto(a)) > static_cast<int>(ToProto(b)));
      EXPECT_EQ(Narrower(a, b), Wider(a, b) ? b : a);
    }
  }
}

TEST(RightsTest, MapFlagsAskNoMoreThanTheRight) {
  absl::StatusOr<MapFlags> r = ToMapFlags(CpuAccess::kRead);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->prot, PROT_READ);
  EXPECT_EQ(r->sync, uint64_t{DMA_BUF_SYNC_READ});
  absl::StatusOr<MapFlags> rw = ToMapFlags(CpuAccess::kReadWrite);
  ASSERT_TRUE(rw.ok());
  EXPECT_EQ(rw->prot, PROT_READ | PROT_WRITE);
  EXPECT_EQ(rw->sync, uint64_t{DMA_BUF_SYNC_RW});
  EXPECT_EQ(ToMapFlags(CpuAccess::kNone).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RightsTest, UnknownValuesAreRefusedNotGuessed) {
  EXPECT_EQ(FromProto(v1::CPU_ACCESS_UNSPECIFIED).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromProto(static_cast<v1::CpuAccess>(42)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromKernel(3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromKernel(~0u).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace halloc
