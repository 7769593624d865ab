// The allocator core's test fixture: sessions on socketpair channels
// standing in for broker connections (so no gRPC and no daemon), and the
// requests the tests make. For allocator_test and allocator_sharing_test.
#ifndef HALLOC_SERVICE_ALLOCATOR_TESTING_H_
#define HALLOC_SERVICE_ALLOCATOR_TESTING_H_

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <utility>

#include "clients/cpp/halloc/base/scm.h"
#include "gtest/gtest.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"

namespace halloc {

struct Peer {
  std::shared_ptr<Session> session;
  UniqueFd client_end;  // what a client would read
};

// A session of `core` for a process of `uid` (gid the same), its fds going
// to the returned client end.
inline Peer OpenPeer(Allocator& core, uid_t uid) {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  Peer p;
  p.client_end.reset(sv[1]);
  p.session = *core.OpenSession({uid, uid, getpid(), "", std::nullopt},
                                std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  return p;
}

class AllocatorTest : public ::testing::Test {
 protected:
  // Read-only views bind every uid (as hallocd's --read_only_for_own_uid):
  // the sessions' uids (1000, 2000) may be the test's own, a user's run.
  AllocatorTest()
      : core_(std::make_unique<MemfdBackend>(UdmabufSources::ThisKernel(), /*owner=*/0), Limits()) {
  }

  Peer Open(uid_t uid = 1000) { return OpenPeer(core_, uid); }

  // Reads one BufferFd frame from the client end.
  std::pair<v1::BufferFd, UniqueFd> ReadFd(Peer& p) {
    absl::StatusOr<Record> rec = ReceiveRecord(p.client_end.get(), true);
    EXPECT_TRUE(rec.ok()) << rec.status();
    if (!rec.ok()) return {};
    v1::BrokerFrame frame;
    EXPECT_TRUE(frame.ParseFromString(rec->bytes));
    EXPECT_EQ(rec->fds.size(), 1u);
    return {frame.buffer(), std::move(rec->fds[0])};
  }

  // `owner` shares buffer `id` with `uid`, with CPU `access`.
  absl::StatusOr<v1::Grant> Share(Peer& owner, uint64_t id, uid_t uid,
                                  v1::CpuAccess access = v1::CPU_ACCESS_READ) {
    v1::ShareRequest share;
    share.set_buffer_id(id);
    share.mutable_peer()->set_uid(uid);
    share.set_cpu_access(access);
    return core_.Share(*owner.session, share);
  }

  static v1::AllocateRequest Blob(uint64_t size, uint32_t count = 1) {
    v1::AllocateRequest req;
    req.mutable_desc()->set_size(size);
    req.mutable_desc()->set_name("test");
    req.set_count(count);
    return req;
  }

  Allocator core_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_ALLOCATOR_TESTING_H_
