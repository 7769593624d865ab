// Buffer without a daemon: what it takes its fd to be.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

UniqueFd Memfd() {
  UniqueFd fd(::memfd_create("buffer-test", MFD_CLOEXEC));
  if (fd && ::ftruncate(fd.get(), 4096) != 0) return UniqueFd();
  return fd;
}

// Mappings of this test's memfds in this process.
int Mapped() {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    n += line.find("memfd:buffer-test") != std::string::npos;
  }
  return n;
}

v1::BufferInfo Info(v1::FdKind kind) {
  v1::BufferInfo info;
  info.set_id(1);
  info.set_size(4096);
  info.set_fd_kind(kind);
  return info;
}

// hallocd's replies say what the fd is (BufferInfo.fd_kind); a BufferInfo
// that does not say (made by hand, or from an older hallocd) has the fd
// asked.
TEST(BufferTest, AsksTheFdOnlyWhenTheInfoDoesNotSay) {
  Buffer asked(Info(v1::FD_KIND_UNSPECIFIED), Memfd());
  ASSERT_GE(asked.fd(), 0);
  EXPECT_FALSE(asked.is_dmabuf());
  absl::StatusOr<Mapping> m = asked.Map(Access::kReadWrite);
  ASSERT_TRUE(m.ok()) << m.status();
  m->as<char>()[0] = 1;
  EXPECT_EQ(Mapped(), 1) << "Mapped() sees this test's mappings";

  Buffer told(Info(v1::FD_KIND_MEMFD), Memfd());
  EXPECT_FALSE(told.is_dmabuf());
  EXPECT_TRUE(told.Map(Access::kRead).ok());
}

// The info is taken at its word (no fstatfs per Map): a memfd said to be a
// dma-buf gets the sync bracket, which a memfd refuses, and Map says so
// without leaving a mapping behind.
TEST(BufferTest, TakesTheInfosWordForWhatTheFdIs) {
  Buffer b(Info(v1::FD_KIND_DMA_BUF), Memfd());
  EXPECT_TRUE(b.is_dmabuf());
  absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("DMA_BUF_IOCTL_SYNC"), std::string::npos)
      << m.status();
  EXPECT_EQ(Mapped(), 0);
  // A dma-buf by its info: the fence ioctl is tried (and refused by the
  // memfd), not turned down as a memfd's would be.
  EXPECT_NE(b.ExportSyncFile(Access::kRead).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BufferTest, NoFdIsNoDmaBuf) {
  Buffer b(Info(v1::FD_KIND_DMA_BUF), Memfd());
  absl::StatusOr<UniqueFd> fd = b.TakeFd();
  ASSERT_TRUE(fd.ok());
  EXPECT_FALSE(b.is_dmabuf());
  EXPECT_EQ(b.Map(Access::kRead).status().code(), absl::StatusCode::kFailedPrecondition);
}

// A memfd maps past its end and the first touch there is SIGBUS: a
// description larger than its fd is DATA_LOSS, not a crash (a camera
// frame drawn into it took the process down before).
TEST(BufferTest, ADescriptionLargerThanItsMemfdIsNotMapped) {
  v1::BufferInfo info = Info(v1::FD_KIND_MEMFD);
  info.set_size(4 * 4096);
  const Buffer b(info, Memfd());
  absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  EXPECT_NE(m.status().message().find("4096"), absl::string_view::npos) << m.status();
  EXPECT_EQ(Mapped(), 0);
  // One as large as its fd maps, and the whole of it can be written.
  const Buffer whole(Info(v1::FD_KIND_MEMFD), Memfd());
  absl::StatusOr<Mapping> ok = whole.Map(Access::kReadWrite);
  ASSERT_TRUE(ok.ok()) << ok.status();
  static_cast<uint8_t*>(ok->data())[4095] = 1;
}

// Unmap ends the mapping (and CPU access) and says how that went; once.
TEST(BufferTest, UnmapEndsTheMappingOnce) {
  const Buffer b(Info(v1::FD_KIND_MEMFD), Memfd());
  absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(Mapped(), 1);
  EXPECT_TRUE(m->Unmap().ok());
  EXPECT_EQ(m->data(), nullptr);
  EXPECT_EQ(m->size(), 0u);
  EXPECT_EQ(Mapped(), 0);
  EXPECT_TRUE(m->Unmap().ok()) << "a second is a no-op";
}

// A mapping kept across frames brackets each CPU access of its own: Map
// begins one, EndAccess and BeginAccess alternate, and each says when it
// is out of turn (a memfd keeps only which bracket it is in).
TEST(BufferTest, AccessIsBracketedAgainAndAgainOnOneMapping) {
  const Buffer b(Info(v1::FD_KIND_MEMFD), Memfd());
  absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->access(), Access::kReadWrite);
  absl::StatusOr<Mapping> ro = b.Map(Access::kRead);
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(ro->access(), Access::kRead) << "says what it may not be written through";
  ASSERT_TRUE(ro->Unmap().ok());
  EXPECT_EQ(m->BeginAccess().code(), absl::StatusCode::kFailedPrecondition) << "Map began it";
  for (int frame = 0; frame < 3; ++frame) {
    ASSERT_TRUE(m->EndAccess().ok());
    EXPECT_EQ(m->EndAccess().code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(m->BeginAccess().ok());
    m->as<uint8_t>()[0] = static_cast<uint8_t>(frame);
  }
  ASSERT_TRUE(m->EndAccess().ok());
  Mapping moved = *std::move(m);
  EXPECT_EQ(moved.EndAccess().code(), absl::StatusCode::kFailedPrecondition)
      << "a move keeps the bracket's state";
  EXPECT_TRUE(moved.Unmap().ok()) << "nothing left to end";
  EXPECT_EQ(moved.BeginAccess().code(), absl::StatusCode::kFailedPrecondition) << "unmapped";
  EXPECT_EQ(moved.EndAccess().code(), absl::StatusCode::kFailedPrecondition) << "unmapped";
  EXPECT_EQ(Mapped(), 0);
}

// Rows of a plane are handed out only when every byte of them is mapped,
// whatever the layout says (no product wraps): the consumers that walked
// offset + y * stride on the daemon's word read or wrote past the mapping.
TEST(BufferTest, RowsAreHandedOutOnlyWhenAllOfThemAreMapped) {
  const Buffer b(Info(v1::FD_KIND_MEMFD), Memfd());  // 4096 bytes
  absl::StatusOr<Mapping> m = b.Map(Access::kReadWrite);
  ASSERT_TRUE(m.ok()) << m.status();
  const uint8_t* base = m->as<uint8_t>();
  absl::StatusOr<uint8_t*> rows = m->Rows(0, 64, 64, 64);  // exactly all of it
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, base);
  rows = m->Rows(96, 128, 32, 32);  // the last row ends at 96 + 31 * 128 + 32 = 4096
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, base + 96);
  struct Bad {
    uint64_t offset, stride, row_bytes, rows;
  };
  for (const Bad& bad : std::vector<Bad>{
           {0, 64, 64, 65},                 // one row too many
           {1, 64, 64, 64},                 // the last row one byte out
           {4097, 0, 0, 0},                 // the offset itself out
           {4000, 64, 97, 1},               // one row past the end
           {0, 32, 64, 2},                  // rows overlap: stride shorter than a row
           {0, 0, 0, 2},                    // a stride of 0
           {64, uint64_t{1} << 63, 64, 3},  // (rows - 1) * stride wraps
           {UINT64_MAX - 10, 64, 64, 1},    // offset + row wraps
           {0, 1, UINT64_MAX, 1},           // a row longer than anything
       }) {
    SCOPED_TRACE(absl::StrCat(bad.offset, " ", bad.stride, " ", bad.row_bytes, " ", bad.rows));
    EXPECT_EQ(m->Rows(bad.offset, bad.stride, bad.row_bytes, bad.rows).status().code(),
              absl::StatusCode::kOutOfRange);
  }
}

}  // namespace
}  // namespace halloc
