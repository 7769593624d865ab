// The allocator under hallocd's own limit on buffers (Limits::max_buffers,
// Registry::SetMaxBuffers): room reserved by a call that then fails comes
// back; the limit binds every session.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"
#include "service/fd_channel.h"

namespace halloc {
namespace {

// A memfd backend whose next `fail` allocations fail (ENOMEM).
class FailingBackend : public MemfdBackend {
 public:
  explicit FailingBackend(std::atomic<int>* fail) : fail_(fail) {}
  absl::StatusOr<UniqueFd> Allocate(const BackendRequest& r) override {
    if (fail_->load() > 0) {
      fail_->fetch_sub(1);
      return absl::ResourceExhaustedError("out of memory (test)");
    }
    return MemfdBackend::Allocate(r);
  }

 private:
  std::atomic<int>* const fail_;
};

v1::AllocateRequest Blob(uint64_t size, uint32_t count = 1) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_size(size);
  req.set_count(count);
  return req;
}

TEST(AllocatorLimitsTest, RoomReservedByACallThatFailsComesBack) {
  std::atomic<int> fail{0};
  Limits limits;
  limits.max_buffers = 2;
  Allocator core(std::make_unique<FailingBackend>(&fail), limits);
  EXPECT_EQ(core.Stats().max_buffers(), 2u);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd client_end(sv[0]);
  const uid_t uid = ::getuid();
  absl::StatusOr<std::shared_ptr<Session>> session = core.OpenSession(
      {uid, ::getgid(), ::getpid(), "", std::nullopt},
      std::make_shared<SocketFdChannel>(UniqueFd(sv[1])));
  ASSERT_TRUE(session.ok()) << session.status();
  fail = 5;
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(core.Allocate(**session, Blob(4096, 2)).ok());
  }
  // Had any failed call kept its reservation, there would be no room.
  absl::StatusOr<v1::AllocateResponse> two = core.Allocate(**session, Blob(4096, 2));
  EXPECT_TRUE(two.ok()) << two.status();
  absl::StatusOr<v1::AllocateResponse> third = core.Allocate(**session, Blob(4096));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_TRUE(absl::StrContains(third.status().message(), "--max_buffers")) << third.status();
}

}  // namespace
}  // namespace halloc
