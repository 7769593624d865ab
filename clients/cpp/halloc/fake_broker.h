// A scripted fake of hallocd's broker socket for libhalloc's tests
// (client_broker_test.cc, client_import_test.cc): it handshakes like
// hallocd, then answers each request as the test says, and the helpers the
// tests build their replies and checks with.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_FAKE_BROKER_H_
#define HALLOC_CLIENTS_CPP_HALLOC_FAKE_BROKER_H_

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/open_fds.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace testing {

// A broker socket that handshakes like hallocd and then answers each
// request with `answer`, on its own thread.
class FakeBroker {
 public:
  using Answer = std::function<void(int sock, const v1::BrokerRequest&)>;
  // `broker_import`: its Welcome says it serves Import on the socket;
  // `broker_share`, Share and Revoke; `broker_metadata`, Describe and
  // SetMetadata.
  explicit FakeBroker(Answer answer, bool broker_import = false, bool broker_share = false,
                      bool broker_metadata = false)
      : answer_(std::move(answer)),
        broker_import_(broker_import),
        broker_share_(broker_share),
        broker_metadata_(broker_metadata) {
    path_ = dir_ / "broker.sock";
    listener_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    const absl::StatusOr<sockaddr_un> addr = UnixAddress(path_);
    if (!addr.ok() ||
        ::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
        ::listen(listener_.get(), 4) != 0) {
      ADD_FAILURE() << "FakeBroker cannot listen on " << path_;
    }
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeBroker() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    if (conn_) ::shutdown(conn_.get(), SHUT_RDWR);
    thread_.join();
  }
  // `timeout`: long by default, so that a starved machine fails no call.
  ConnectOptions options(absl::Duration timeout = absl::Seconds(10)) const {
    ConnectOptions o;
    o.broker_socket = path_;
    o.control_socket = dir_ / "control.sock";  // never used here
    o.timeout = timeout;
    return o;
  }
  // Whether the client's connection ended (shut down, or its last copy
  // closed) within `timeout`.
  bool WaitForEnd(absl::Duration timeout) { return ended_.WaitForNotificationWithTimeout(timeout); }
  // BrokerRequest.cpu of every fast-path request, in order.
  std::vector<uint32_t> cpus() {
    absl::MutexLock lock(&mu_);
    return cpus_;
  }
  // Release requests received, in order.
  std::vector<v1::ReleaseRequest> releases() {
    absl::MutexLock lock(&mu_);
    return releases_;
  }
  // The grant ids of the Revokes it was sent, in order.
  std::vector<uint64_t> revoked() {
    absl::MutexLock lock(&mu_);
    return revoked_;
  }
  // Every buffer id those releases named, in order: those that dropped
  // holds, or (`import_references`) those that gave back one import's
  // reference each.
  std::vector<uint64_t> released_ids(bool import_references = false) {
    std::vector<uint64_t> ids;
    for (const v1::ReleaseRequest& r : releases()) {
      if (r.import_references() != import_references) continue;
      ids.insert(ids.end(), r.buffer_ids().begin(), r.buffer_ids().end());
    }
    return ids;
  }
  std::vector<uint64_t> given_back_references() { return released_ids(true); }
  // The hold generations those give-backs named, in order (none where the
  // client sent none).
  std::vector<uint64_t> given_back_generations() {
    std::vector<uint64_t> generations;
    for (const v1::ReleaseRequest& r : releases()) {
      if (!r.import_references()) continue;
      EXPECT_TRUE(r.hold_generations().empty() || r.hold_generations_size() == r.buffer_ids_size())
          << "one generation per id";
      generations.insert(generations.end(), r.hold_generations().begin(),
                         r.hold_generations().end());
    }
    return generations;
  }
  // Whether its Welcome says it counts import references (it does unless
  // told otherwise before the client connects: an older hallocd).
  void set_import_references(bool counted) { import_references_ = counted; }
  // Whether its Welcome says it takes hold generations (the same).
  void set_hold_generations(bool taken) { hold_generations_ = taken; }

  // Sends `frame` (with `fds`) to the client, as hallocd's gRPC side does
  // with an Import's fd. After the handshake only.
  void Send(const v1::BrokerFrame& frame, std::vector<int> fds) {
    (void)SendRecord(conn_.get(), frame.SerializeAsString(), fds, false);
  }
  std::string control_socket() const { return dir_ / "control.sock"; }
  // `service` served by gRPC on control_socket(): the rest of a fake
  // hallocd, for what a test's client asks there.
  std::unique_ptr<grpc::Server> ServeGrpc(grpc::Service* service) const {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + control_socket(), grpc::InsecureServerCredentials());
    builder.RegisterService(service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr) ADD_FAILURE() << "no gRPC server on " << control_socket();
    return server;
  }

  static void Reply(int sock, v1::BrokerReply reply, std::vector<int> fds = {}) {
    v1::BrokerFrame frame;
    *frame.mutable_reply() = std::move(reply);
    (void)SendRecord(sock, frame.SerializeAsString(), fds, false);
  }

 private:
  void Serve() {
    Serving();
    ended_.Notify();
  }
  void Serving() {
    conn_.reset(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn_) return;
    v1::BrokerFrame hello;
    hello.mutable_hello()->set_version(kBrokerProtocolVersion);
    hello.mutable_hello()->set_challenge("c");
    (void)SendRecord(conn_.get(), hello.SerializeAsString(), {}, false);
    for (;;) {
      absl::StatusOr<Record> rec = ReceiveRecord(conn_.get(), false);
      if (!rec.ok()) return;
      v1::BrokerRequest req;
      if (!req.ParseFromString(rec->bytes)) return;
      if (req.has_verify()) {
        v1::BrokerReply r;
        r.set_request_id(req.request_id());
        r.mutable_welcome()->set_session_id(1);
        r.mutable_welcome()->set_session_token("t");
        r.mutable_welcome()->set_import_call_ids(true);
        r.mutable_welcome()->set_allocate_call_ids(true);
        r.mutable_welcome()->set_broker_import(broker_import_);
        r.mutable_welcome()->set_broker_share(broker_share_);
        r.mutable_welcome()->set_broker_revoke(broker_share_);
        r.mutable_welcome()->set_broker_metadata(broker_metadata_);
        r.mutable_welcome()->set_import_references(import_references_);
        r.mutable_welcome()->set_hold_generations(hold_generations_);
        Reply(conn_.get(), r);
        continue;
      }
      if (req.has_release()) {
        absl::MutexLock lock(&mu_);
        releases_.push_back(req.release());
      }
      if (req.has_revoke()) {
        absl::MutexLock lock(&mu_);
        revoked_.push_back(req.revoke().grant_id());
      }
      {
        absl::MutexLock lock(&mu_);
        cpus_.push_back(req.cpu());
      }
      answer_(conn_.get(), req);
    }
  }

  Answer answer_;
  const bool broker_import_;
  const bool broker_share_;
  const bool broker_metadata_;
  std::atomic<bool> import_references_{true};
  std::atomic<bool> hold_generations_{true};
  TempDir dir_{"fake"};
  std::string path_;
  UniqueFd listener_, conn_;
  absl::Notification ended_;  // Serve returned: the connection ended
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<v1::ReleaseRequest> releases_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> revoked_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> cpus_ ABSL_GUARDED_BY(mu_);
};

inline UniqueFd Memfd() {
  UniqueFd fd(::memfd_create("fake", MFD_CLOEXEC));
  if (fd && ::ftruncate(fd.get(), 4096) != 0) fd.reset();  // an invalid fd: the test fails
  return fd;
}

inline v1::BrokerReply ReleaseReply(uint64_t request_id) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  r.mutable_release();
  return r;
}

inline v1::BrokerReply AllocateReply(uint64_t request_id, std::vector<uint64_t> ids) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  for (uint64_t id : ids) {
    v1::BufferInfo* b = r.mutable_allocate()->add_buffers();
    b->set_id(id);
    b->set_size(4096);
  }
  return r;
}

// A broker Import's answer (`newly_held`, `hold_generation`: ImportResponse's).
inline v1::BrokerReply ImportReply(uint64_t request_id, uint64_t buffer_id, bool newly_held = false,
                                   uint64_t hold_generation = 0) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  r.mutable_import_buffer()->mutable_buffer()->set_id(buffer_id);
  r.mutable_import_buffer()->set_newly_held(newly_held);
  r.mutable_import_buffer()->set_hold_generation(hold_generation);
  return r;
}

}  // namespace testing
}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_FAKE_BROKER_H_
