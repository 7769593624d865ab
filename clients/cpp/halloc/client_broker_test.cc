// libhalloc's side of the broker protocol against a scripted fake daemon:
// replies that come after the caller gave up, and replies that carry the
// wrong fds, must not leave buffers held (the client gives them back).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace {

// A broker socket that handshakes like hallocd and then answers each
// request with `answer`, on its own thread.
class FakeBroker {
 public:
  using Answer = std::function<void(int sock, const v1::BrokerRequest&)>;
  // `broker_import`: its Welcome says it serves Import on the socket.
  explicit FakeBroker(Answer answer, bool broker_import = false)
      : answer_(std::move(answer)), broker_import_(broker_import) {
    char tmpl[] = "/tmp/halloc-fake-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/broker.sock";
    listener_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(listener_.get(), 4);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeBroker() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    if (conn_) ::shutdown(conn_.get(), SHUT_RDWR);
    thread_.join();
    std::filesystem::remove_all(dir_);
  }
  // `timeout`: long by default, so that a starved machine fails no call.
  ConnectOptions options(absl::Duration timeout = absl::Seconds(10)) const {
    ConnectOptions o;
    o.broker_socket = path_;
    o.control_socket = dir_ + "/control.sock";  // never used here
    o.timeout = timeout;
    return o;
  }
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

  // Sends `frame` (with `fds`) to the client, as hallocd's gRPC side does
  // with an Import's fd. After the handshake only.
  void Send(const v1::BrokerFrame& frame, std::vector<int> fds) {
    (void)SendRecord(conn_.get(), frame.SerializeAsString(), fds, false);
  }
  std::string control_socket() const { return dir_ + "/control.sock"; }

  static void Reply(int sock, v1::BrokerReply reply, std::vector<int> fds = {}) {
    v1::BrokerFrame frame;
    *frame.mutable_reply() = std::move(reply);
    (void)SendRecord(sock, frame.SerializeAsString(), fds, false);
  }

 private:
  void Serve() {
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
        r.mutable_welcome()->set_broker_import(broker_import_);
        Reply(conn_.get(), r);
        continue;
      }
      if (req.has_release()) {
        absl::MutexLock lock(&mu_);
        releases_.push_back(req.release());
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
  std::string dir_, path_;
  UniqueFd listener_, conn_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<v1::ReleaseRequest> releases_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> cpus_ ABSL_GUARDED_BY(mu_);
};

UniqueFd Memfd() {
  UniqueFd fd(::memfd_create("fake", MFD_CLOEXEC));
  if (fd) (void)::ftruncate(fd.get(), 4096);
  return fd;
}

v1::BrokerReply ReleaseReply(uint64_t request_id) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  r.mutable_release();
  return r;
}

v1::BrokerReply AllocateReply(uint64_t request_id, std::vector<uint64_t> ids) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  for (uint64_t id : ids) {
    v1::BufferInfo* b = r.mutable_allocate()->add_buffers();
    b->set_id(id);
    b->set_size(4096);
  }
  return r;
}

int CountOpenFds() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd) n += ::fcntl(fd, F_GETFD) != -1;
  return n;
}

TEST(ClientBrokerTest, AReplyAfterTheDeadlineIsGivenBack) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_allocate()) {
      absl::SleepFor(absl::Seconds(2));  // longer than the 1 s deadline
      UniqueFd fd = Memfd();
      FakeBroker::Reply(sock, AllocateReply(req.request_id(), {41}), {fd.get()});
    } else if (req.has_release()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    }
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  const int fds_before = CountOpenFds();
  EXPECT_EQ(c->Allocate(BlobDescriptor(4096)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(1500));  // the late reply is (about) queued now
  // The next call takes the late reply off the socket and gives buffer 41
  // back; its own answer still arrives.
  EXPECT_TRUE(c->Release(7).ok());
  for (int i = 0; i < 1000 && broker.releases().size() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  std::vector<v1::ReleaseRequest> rel = broker.releases();
  ASSERT_EQ(rel.size(), 2u);
  std::set<uint64_t> released;
  for (const v1::ReleaseRequest& r : rel) {
    ASSERT_EQ(r.buffer_ids_size(), 1);
    released.insert(r.buffer_ids(0));
  }
  // The caller's own, and buffer 41 given back.
  EXPECT_EQ(released, (std::set<uint64_t>{7, 41}));
  EXPECT_EQ(CountOpenFds(), fds_before);  // the late fd was closed
}

// A gRPC Allocator whose Import delivers its fd on the broker socket only
// once the caller's deadline has passed, as a busy hallocd may.
class LateImport final : public v1::Allocator::Service {
 public:
  // Sends `memfd` (and closes it here).
  LateImport(FakeBroker* broker, UniqueFd memfd) : broker_(broker), memfd_(std::move(memfd)) {}
  grpc::Status Import(grpc::ServerContext* ctx, const v1::ImportRequest* req,
                      v1::ImportResponse* resp) override {
    for (int i = 0; i < 500 && !ctx->IsCancelled(); ++i) absl::SleepFor(absl::Milliseconds(10));
    v1::BrokerFrame frame;
    frame.mutable_buffer()->set_buffer_id(42);
    frame.mutable_buffer()->set_call_id(req->call_id());
    broker_->Send(frame, {memfd_.get()});
    memfd_ = UniqueFd();
    resp->mutable_buffer()->set_id(42);
    return grpc::Status::OK;
  }

 private:
  FakeBroker* const broker_;
  UniqueFd memfd_;
};

// Whether any fd of this process is open on the file `st` describes.
bool OpenOn(const struct stat& st) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    struct stat other;
    if (::stat(e.path().c_str(), &other) == 0 && other.st_dev == st.st_dev &&
        other.st_ino == st.st_ino) {
      return true;
    }
  }
  return false;
}

// An Import that failed (its deadline passed) but whose fd came after all:
// the fd is closed when it arrives, not kept for a taker that never comes.
TEST(ClientBrokerTest, TheFdOfAnImportThatGaveUpIsClosedWhenItComes) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  LateImport service(&broker, std::move(memfd));  // then only the client's copy is left
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + broker.control_socket(), grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(300));  // the late fd is (about) queued now
  // The next call takes the late fd off the socket first.
  EXPECT_TRUE(c->Release(7).ok());
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Import's fd is still open in the client";
  server->Shutdown();
}

v1::BrokerReply ImportReply(uint64_t request_id, uint64_t buffer_id) {
  v1::BrokerReply r;
  r.set_request_id(request_id);
  r.mutable_import_buffer()->mutable_buffer()->set_id(buffer_id);
  return r;
}

// On the broker an Import's reply and fd come in one record: one that comes
// after the caller gave up has its fd closed, and nothing is given back
// (the session may have held the buffer before this import).
TEST(ClientBrokerTest, ABrokerImportThatGaveUpClosesItsLateFdAndReleasesNothing) {
  struct stat memfd_stat {};
  UniqueFd memfd = Memfd();
  ASSERT_EQ(::fstat(memfd.get(), &memfd_stat), 0);
  std::atomic<int> imports{0};
  FakeBroker broker(
      [&](int sock, const v1::BrokerRequest& req) {
        if (req.has_import_buffer()) {
          ++imports;
          absl::SleepFor(absl::Seconds(2));  // longer than the 1 s deadline
          FakeBroker::Reply(sock, ImportReply(req.request_id(), 42), {memfd.get()});
          memfd = UniqueFd();  // then only the client's copy is left
        } else if (req.has_release()) {
          FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
        }
      },
      /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(1500));  // the late reply is (about) queued now
  EXPECT_TRUE(c->Release(7).ok());           // takes it off the socket first
  // One more round trip: a give-back sent while Release(7) waited has
  // reached the broker by the time this is answered.
  EXPECT_TRUE(c->Release(8).ok());
  EXPECT_EQ(imports.load(), 1) << "the Import went on the broker socket";
  EXPECT_FALSE(OpenOn(memfd_stat)) << "the late Import's fd is still open in the client";
  std::vector<uint64_t> released;
  for (const v1::ReleaseRequest& r : broker.releases()) {
    released.insert(released.end(), r.buffer_ids().begin(), r.buffer_ids().end());
  }
  EXPECT_EQ(released, (std::vector<uint64_t>{7, 8})) << "only the caller's own Releases";
}

TEST(ClientBrokerTest, ABrokerImportReplyWithoutItsFdIsDataLoss) {
  FakeBroker broker(
      [](int sock, const v1::BrokerRequest& req) {
        if (req.has_import_buffer()) FakeBroker::Reply(sock, ImportReply(req.request_id(), 42));
        if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
      },
      /*broker_import=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Import("token").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(c->Release(8).ok());  // after any give-back it would have sent
  ASSERT_EQ(broker.releases().size(), 1u) << "buffer 42 was given back";
  EXPECT_EQ(broker.releases()[0].buffer_ids(0), 8u);
}

// The handshake's timeout bounds the whole handshake, not each of its two
// waits: a daemon that takes 0.6 s for its hello and 0.6 s more for its
// welcome is past a 1 s timeout.
TEST(ClientBrokerTest, TheHandshakeTimeoutBoundsBothWaits) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd ours(sv[0]), theirs(sv[1]);
  std::thread slow([&] {
    absl::SleepFor(absl::Milliseconds(600));
    v1::BrokerFrame hello;
    hello.mutable_hello()->set_version(kBrokerProtocolVersion);
    (void)SendRecord(theirs.get(), hello.SerializeAsString(), {}, false);
    absl::StatusOr<Record> verify = ReceiveRecord(theirs.get(), false);
    absl::SleepFor(absl::Milliseconds(600));
    v1::BrokerReply r;
    r.mutable_welcome()->set_session_token("t");
    FakeBroker::Reply(theirs.get(), r);
  });
  absl::StatusOr<BrokerConnection> conn = Handshake(std::move(ours), absl::Seconds(1));
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kDeadlineExceeded) << conn.status();
  slow.join();
}

TEST(ClientBrokerTest, AReplyWithTheWrongFdsIsRefusedAndGivenBack) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_allocate()) {
      UniqueFd fd = Memfd();  // two buffers, one fd
      FakeBroker::Reply(sock, AllocateReply(req.request_id(), {5, 6}), {fd.get()});
    }
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Allocate(BlobDescriptor(4096), 2).status().code(),
            absl::StatusCode::kDataLoss);
  for (int i = 0; i < 1000 && broker.releases().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(broker.releases().size(), 1u);
  EXPECT_EQ(broker.releases()[0].buffer_ids_size(), 2);
}

// A call that fails for another reason than its deadline (here a malformed
// record ahead of its answer) leaves its answer, when it comes, to be given
// back like a late one: buffer 51 is released, its fd closed.
TEST(ClientBrokerTest, TheAnswerOfACallThatFailedIsGivenBack) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_allocate()) {
      (void)SendRecord(sock, "\xff\xff not a frame", {}, false);
      absl::SleepFor(absl::Milliseconds(200));  // after the caller gave up
      UniqueFd fd = Memfd();
      FakeBroker::Reply(sock, AllocateReply(req.request_id(), {51}), {fd.get()});
    } else if (req.has_release()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    }
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const int fds_before = CountOpenFds();
  EXPECT_EQ(c->Allocate(BlobDescriptor(4096)).status().code(), absl::StatusCode::kDataLoss);
  absl::SleepFor(absl::Milliseconds(400));  // the answer is queued now
  EXPECT_TRUE(c->Release(9).ok());  // takes it off the socket on the way
  for (int i = 0; i < 1000 && broker.releases().size() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  std::set<uint64_t> released;
  for (const v1::ReleaseRequest& r : broker.releases()) {
    for (uint64_t id : r.buffer_ids()) released.insert(id);
  }
  EXPECT_EQ(released, (std::set<uint64_t>{9, 51}));
  EXPECT_EQ(CountOpenFds(), fds_before) << "the answer's fd was kept";
}

// An OK answer without the buffers asked for is DATA_LOSS (and what did
// come is given back), never a crash.
TEST(ClientBrokerTest, AnAnswerWithoutTheBuffersAskedForIsDataLoss) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_allocate()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));  // no allocate at all
    } else if (req.has_release()) {
      FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    }
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Allocate(BlobDescriptor(4096)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(c->Allocate(BlobDescriptor(4096), 3).status().code(), absl::StatusCode::kDataLoss);
}

// In a child, a Client its parent connected refuses every call: the two
// would share its socket and take each other's replies. The child is a bare
// fork of this threaded process (gRPC's threads, the fake broker's): that
// is the case under test, and its calls allocate, which glibc's malloc
// allows after a fork but the sanitizers' allocators do not (a lock another
// thread held at the fork stays held in the child).
TEST(ClientBrokerTest, AChildCannotUseItsParentsClient) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a forked child of a threaded process may hang in the sanitizer's allocator";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  GTEST_SKIP() << "a forked child of a threaded process may hang in the sanitizer's allocator";
#endif
#endif
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const absl::Status release = c->Release(7);
    const absl::Status allocate = c->Allocate(BlobDescriptor(4096)).status();
    const absl::Status stats = c->Stats().status();  // the gRPC path
    ::_exit(absl::IsFailedPrecondition(release) && absl::IsFailedPrecondition(allocate) &&
                    absl::IsFailedPrecondition(stats)
                ? 0
                : 1);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "a call in the child was not FAILED_PRECONDITION";
  EXPECT_TRUE(c->Release(8).ok()) << "the parent's Client works on";
  EXPECT_EQ(broker.releases().size(), 1u) << "the child sent a request";
}

// One Client, several threads: a call the daemon answers at once returns at
// once, while another waits for an answer that never comes (before, it
// waited behind that call's whole timeout).
TEST(ClientBrokerTest, ACallWaitsForItsOwnAnswerOnly) {
  absl::Notification first_sent;
  FakeBroker broker([&](int sock, const v1::BrokerRequest& req) {
    if (!req.has_release()) return;
    if (req.release().buffer_ids(0) == 1) {
      first_sent.Notify();  // never answered
      return;
    }
    FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(2)));
  ASSERT_TRUE(c.ok()) << c.status();
  std::atomic<bool> first_done{false};
  absl::Status first;
  std::thread waiting([&] {
    first = c->Release(1);
    first_done = true;
  });
  first_sent.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(50));  // the first thread waits for its answer now
  EXPECT_TRUE(c->Release(2).ok());
  EXPECT_FALSE(first_done) << "the answered call returned only after the other's timeout";
  waiting.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kDeadlineExceeded);
}

// A daemon that stops reading: calls end at their timeout, never block in
// their send once its socket is full.
TEST(ClientBrokerTest, CallsKeepTheirTimeoutWhenTheDaemonStopsReading) {
  absl::Notification resume;
  FakeBroker broker([&](int sock, const v1::BrokerRequest& req) {
    resume.WaitForNotification();  // stops reading at the first request
    if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Milliseconds(5)));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Notification all_returned;
  int deadline_exceeded = 0;
  std::thread calls([&] {
    for (int i = 0; i < 400; ++i) {  // more than the socket holds
      deadline_exceeded += absl::IsDeadlineExceeded(c->Release(100 + i));
    }
    all_returned.Notify();
  });
  const bool returned = all_returned.WaitForNotificationWithTimeout(absl::Seconds(60));
  resume.Notify();
  calls.join();
  EXPECT_TRUE(returned) << "a call blocked past its timeout";
  EXPECT_EQ(deadline_exceeded, 400);
}

// Each request says which CPU it was sent from (a CPU this process may run
// on, plus one), so that the broker can answer from there.
TEST(ClientBrokerTest, RequestsSayWhichCpuTheyComeFrom) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->Release(1).ok());
  ASSERT_TRUE(c->Release(2).ok());
  cpu_set_t ours;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(ours), &ours), 0);
  std::vector<uint32_t> cpus = broker.cpus();
  ASSERT_EQ(cpus.size(), 2u);
  for (uint32_t hint : cpus) {
    ASSERT_GT(hint, 0u);
    EXPECT_TRUE(CPU_ISSET(hint - 1, &ours)) << hint;
  }
}

TEST(ClientBrokerTest, ARefusedConnectionSaysWhy) {
  char tmpl[] = "/tmp/halloc-fake-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string path = dir + "/broker.sock";
  strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  std::thread refuse([&] {
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    v1::BrokerFrame f;
    f.mutable_reply()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
    f.mutable_reply()->set_message("uid 5 holds 3 connections");
    (void)SendRecord(conn.get(), f.SerializeAsString(), {}, false);
  });
  ConnectOptions o;
  o.broker_socket = path;
  o.control_socket = dir + "/control.sock";
  absl::StatusOr<Client> c = Client::Connect(o);
  refuse.join();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c.status().message(), "uid 5 holds 3 connections");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace halloc
