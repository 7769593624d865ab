// libhalloc's side of the broker protocol against a scripted fake daemon:
// replies that come after the caller gave up, and replies that carry the
// wrong fds, must not leave buffers held (the client gives them back).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <functional>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "clients/cpp/halloc/fake_broker.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {
namespace {

using testing::AllocateReply;
using testing::CountOpenFds;
using testing::FakeBroker;
using testing::Memfd;
using testing::ReleaseReply;

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

// The handshake's timeout bounds the whole handshake, not each of its two
// waits: a daemon that takes 0.6 s for its hello and 0.6 s more for its
// welcome is past a 1 s timeout.
// fds no call claims (a buggy daemon's, sent before the reply) are kept
// for a call that may still claim them, but never more than
// kMostPendingFds of them: they cannot fill the client's fd table.
TEST(ClientBrokerTest, FdsNoCallClaimsAreBounded) {
  constexpr int kStray = 1100;
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    if (!req.has_release()) return;
    UniqueFd fd = Memfd();
    for (int i = 0; i < kStray; ++i) {
      v1::BrokerFrame frame;
      frame.mutable_buffer()->set_buffer_id(1000 + i);
      frame.mutable_buffer()->set_call_id(999999);
      (void)SendRecord(sock, frame.SerializeAsString(), {fd.get()}, false);
    }
    FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const int fds_before = CountOpenFds();
  EXPECT_TRUE(c->Release(7).ok());
  const int kept = CountOpenFds() - fds_before;
  EXPECT_GT(kept, 0) << "kept for a call that may claim them";
  EXPECT_LE(kept, 1024) << "every stray fd kept";
}

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

// So is any success that is not an answer to what was asked: a Describe
// or SetMetadata answered with an empty reply (read as buffer 0, of size
// 0), or a Release answered as an Allocate.
TEST(ClientBrokerTest, AnAnswerOfAnotherKindIsDataLoss) {
  FakeBroker broker(
      [](int sock, const v1::BrokerRequest& req) {
        v1::BrokerReply reply;
        reply.set_request_id(req.request_id());
        if (req.has_release()) reply.mutable_allocate();
        FakeBroker::Reply(sock, reply);
      },
      false, false, /*broker_metadata=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Status describe = c->Describe(7).status();
  EXPECT_EQ(describe.code(), absl::StatusCode::kDataLoss) << describe;
  EXPECT_TRUE(absl::StrContains(describe.message(), "Describe: hallocd's reply is not one to"))
      << describe;
  EXPECT_EQ(c->SetMetadata(7, v1::METADATA_DATASPACE, v1::BufferMetadata()).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(c->Release(7).code(), absl::StatusCode::kDataLoss);
}

// A refusal's code is whatever the daemon (or something posing as it)
// wrote: one outside absl's codes is UNKNOWN, with the message kept, and
// never cast into an absl::StatusCode absl does not have.
TEST(ClientBrokerTest, ARefusalWithACodeAbslLacksIsUnknown) {
  FakeBroker broker([](int sock, const v1::BrokerRequest& req) {
    v1::BrokerReply r = ReleaseReply(req.request_id());
    r.set_code(req.release().buffer_ids(0) == 1 ? 99 : 7);  // 7: PERMISSION_DENIED
    r.set_message("refused");
    FakeBroker::Reply(sock, std::move(r));
  });
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Status odd = c->Release(1);
  EXPECT_EQ(odd.code(), absl::StatusCode::kUnknown) << odd;
  EXPECT_TRUE(absl::StrContains(odd.message(), "refused")) << odd;
  EXPECT_EQ(c->Release(2).code(), absl::StatusCode::kPermissionDenied);
}

// Dump's rows come in pages; Client::Dump asks until the last and gives
// them all in one response, in order.
TEST(ClientBrokerTest, DumpGathersEveryPage) {
  class PagedDump final : public v1::Allocator::Service {
   public:
    grpc::Status Dump(grpc::ServerContext*, const v1::DumpRequest* req,
                      v1::DumpResponse* resp) override {
      tokens.push_back(req->page_token());
      if (req->page_token().empty()) {
        resp->add_sessions()->set_session_id(1);
        resp->add_sessions()->set_session_id(2);
        resp->set_next_page_token("next");
      } else if (req->page_token() == "next") {
        resp->add_sessions()->set_session_id(3);
        resp->add_clients()->set_client("app");
        resp->set_next_page_token("last");
      } else {
        resp->add_clients()->set_client("cam");
      }
      return grpc::Status::OK;
    }
    std::vector<std::string> tokens;
  } service;
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::DumpResponse> d = c->Dump();
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->sessions_size(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(d->sessions(i).session_id(), i + 1u);
  ASSERT_EQ(d->clients_size(), 2);
  EXPECT_EQ(d->clients(0).client(), "app");
  EXPECT_EQ(d->clients(1).client(), "cam");
  EXPECT_EQ(d->next_page_token(), "");
  EXPECT_EQ(service.tokens, std::vector<std::string>({"", "next", "last"}));
  server->Shutdown();
}

// A Describe whose reply hallocd could not fit in one broker record (an
// owner's BufferInfo listing thousands of holders: RESOURCE_EXHAUSTED on
// the socket) is asked again over gRPC; any other refusal is the answer.
TEST(ClientBrokerTest, AReplyTooLargeForARecordIsAskedForOverGrpc) {
  class Metadata final : public v1::Allocator::Service {
   public:
    grpc::Status Describe(grpc::ServerContext*, const v1::DescribeRequest* req,
                          v1::DescribeResponse* resp) override {
      ++describes;
      resp->mutable_buffer()->set_id(req->buffer_id());
      for (int i = 0; i < 5000; ++i) resp->mutable_buffer()->add_holders()->set_session_id(i);
      return grpc::Status::OK;
    }
    std::atomic<int> describes{0};
  } service;
  FakeBroker broker(
      [](int sock, const v1::BrokerRequest& req) {
        v1::BrokerReply r;
        r.set_request_id(req.request_id());
        const uint64_t id = req.describe().buffer_id();
        if (id == 7) {
          r.set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
          r.set_message("the reply (90000 bytes) does not fit in one broker record");
        } else if (id == 9) {
          r.set_code(static_cast<int>(absl::StatusCode::kNotFound));
        } else {
          r.mutable_describe()->mutable_buffer()->set_id(id);
        }
        FakeBroker::Reply(sock, r);
      },
      false, false, /*broker_metadata=*/true);
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::BufferInfo> info = c->Describe(8);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->id(), 8u);
  EXPECT_EQ(service.describes, 0) << "answered on the socket";
  info = c->Describe(7);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->holders_size(), 5000);
  EXPECT_EQ(service.describes, 1);
  EXPECT_EQ(c->Describe(9).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(service.describes, 1) << "a refusal is not asked again";
  server->Shutdown();
}

// A daemon (or something posing as one) that gives the same page token
// again would keep List and Dump asking, and gathering, forever: DATA_LOSS.
TEST(ClientBrokerTest, APageTokenGivenTwiceIsDataLossNotALoop) {
  class SamePageAgain final : public v1::Allocator::Service {
   public:
    grpc::Status List(grpc::ServerContext*, const v1::ListRequest*,
                      v1::ListResponse* resp) override {
      resp->add_buffers()->set_id(1);
      resp->set_next_page_token("again");
      return grpc::Status::OK;
    }
    grpc::Status Dump(grpc::ServerContext*, const v1::DumpRequest*,
                      v1::DumpResponse* resp) override {
      resp->add_sessions()->set_session_id(1);
      resp->set_next_page_token("again");
      return grpc::Status::OK;
    }
  } service;
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->List().status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(c->Dump().status().code(), absl::StatusCode::kDataLoss);
  server->Shutdown();
}

// ... so is a cycle of tokens ("a", "b", "a", ...); and tokens that never
// repeat end with the call's timeout, all pages together (each page had a
// timeout of its own, and the rows piled up for as long as pages came).
TEST(ClientBrokerTest, PagesThatNeverEndAreCutShort) {
  class EndlessPages final : public v1::Allocator::Service {
   public:
    grpc::Status List(grpc::ServerContext*, const v1::ListRequest* req,
                      v1::ListResponse* resp) override {
      resp->add_buffers()->set_id(1);
      resp->set_next_page_token(req->page_token() == "a" ? "b" : "a");
      return grpc::Status::OK;
    }
    grpc::Status Dump(grpc::ServerContext*, const v1::DumpRequest*,
                      v1::DumpResponse* resp) override {
      resp->add_sessions()->set_session_id(1);
      resp->set_next_page_token(absl::StrCat(++pages_));  // never the same
      return grpc::Status::OK;
    }

   private:
    std::atomic<uint64_t> pages_{0};
  } service;
  FakeBroker broker([](int, const v1::BrokerRequest&) {});
  std::unique_ptr<grpc::Server> server = broker.ServeGrpc(&service);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(2)));
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Status list = c->List().status();
  EXPECT_EQ(list.code(), absl::StatusCode::kDataLoss) << list;
  const absl::Time start = absl::Now();
  const absl::Status dump = c->Dump().status();
  EXPECT_EQ(dump.code(), absl::StatusCode::kDeadlineExceeded) << dump;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "the pages outlasted the call's timeout";
  server->Shutdown();
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
  // The handshake too has 5 ms: on a starved machine it can take longer,
  // so a few tries, each with a fake of its own (one accepts once).
  std::unique_ptr<FakeBroker> broker;
  absl::StatusOr<Client> c = absl::UnavailableError("not tried");
  for (int i = 0; i < 20 && !c.ok(); ++i) {
    broker = std::make_unique<FakeBroker>([&](int sock, const v1::BrokerRequest& req) {
      resume.WaitForNotification();  // stops reading at the first request
      if (req.has_release()) FakeBroker::Reply(sock, ReleaseReply(req.request_id()));
    });
    c = Client::Connect(broker->options(absl::Milliseconds(5)));
  }
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

// Sends SIGUSR1 (a no-op handler, SA_RESTART) to one thread every 20 ms
// for at most 10 s: a camera app's frame timer, say.
class Interrupter {
 public:
  explicit Interrupter(pthread_t target) : target_(target) {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGUSR1, &sa, &old_);
    thread_ = std::thread([this] {
      for (int i = 0; i < 500 && !stop_.HasBeenNotified(); ++i) {
        ::pthread_kill(target_, SIGUSR1);
        stop_.WaitForNotificationWithTimeout(absl::Milliseconds(20));
      }
    });
  }
  ~Interrupter() {
    stop_.Notify();
    thread_.join();
    ::sigaction(SIGUSR1, &old_, nullptr);
  }

 private:
  const pthread_t target_;
  struct sigaction old_ {};
  absl::Notification stop_;
  std::thread thread_;
};

// Each wait a signal cut short started again in full (recvmsg under the
// socket's receive timeout, poll with its first timeout): while signals
// came more often than that, a call or a handshake whose daemon stayed
// silent never timed out.
TEST(ClientBrokerTest, CallsAndConnectKeepTheirTimeoutWhileSignalsArrive) {
  FakeBroker broker([](int, const v1::BrokerRequest&) {});  // answers nothing
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  // A listener that never accepts: the connect lands in its backlog, and
  // no hello ever comes.
  testing::TempDir dir("silent-broker");
  const std::string silent = dir / "broker.sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  const absl::StatusOr<sockaddr_un> addr = UnixAddress(silent);
  ASSERT_TRUE(addr.ok());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  ConnectOptions unanswered = broker.options(absl::Seconds(1));
  unanswered.broker_socket = silent;
  {
    Interrupter signals(::pthread_self());
    const absl::Time start = absl::Now();
    const absl::Status release = c->Release(7);
    EXPECT_EQ(release.code(), absl::StatusCode::kDeadlineExceeded) << release;
    EXPECT_LT(absl::Now() - start, absl::Seconds(8)) << "the call outlasted its timeout";
  }
  {
    Interrupter signals(::pthread_self());
    const absl::Time start = absl::Now();
    const absl::Status connect = Client::Connect(unanswered).status();
    EXPECT_EQ(connect.code(), absl::StatusCode::kDeadlineExceeded) << connect;
    EXPECT_LT(absl::Now() - start, absl::Seconds(8)) << "the handshake outlasted its timeout";
  }
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

// A Share whose answer came after its caller gave up made a grant nobody
// knows the token of: withdrawn, not left to count against the session's
// grants (and keep the buffer importable) until its end.
TEST(ClientBrokerTest, AGrantMadeAfterTheDeadlineIsWithdrawn) {
  FakeBroker broker(
      [](int sock, const v1::BrokerRequest& req) {
        v1::BrokerReply r;
        r.set_request_id(req.request_id());
        if (req.has_share()) {
          absl::SleepFor(absl::Seconds(2));  // longer than the 1 s deadline
          r.mutable_share()->mutable_grant()->set_id(5);
        } else if (req.has_revoke()) {
          r.mutable_revoke();
        } else if (req.has_release()) {
          r.mutable_release();
        }
        FakeBroker::Reply(sock, r);
      },
      /*broker_import=*/true, /*broker_share=*/true);
  absl::StatusOr<Client> c = Client::Connect(broker.options(absl::Seconds(1)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Share(41, 1000).status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::SleepFor(absl::Milliseconds(1500));  // the late reply is (about) queued now
  EXPECT_TRUE(c->Release(7).ok());           // takes it off the socket first
  EXPECT_TRUE(c->Release(8).ok());           // after the withdrawal it sent
  EXPECT_EQ(broker.revoked(), (std::vector<uint64_t>{5}));
}

// A SOCK_SEQPACKET listener at `path` with room for `backlog` waiting
// connections.
UniqueFd Listen(const std::string& path, int backlog) {
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  const absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  EXPECT_TRUE(addr.ok()) << addr.status();
  if (!addr.ok()) return UniqueFd();
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
  EXPECT_EQ(::listen(listener.get(), backlog), 0);
  return listener;
}

TEST(ClientBrokerTest, ARefusedConnectionSaysWhy) {
  testing::TempDir dir("fake");
  const std::string path = dir / "broker.sock";
  UniqueFd listener = Listen(path, 1);
  std::thread refuse([&] {
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    v1::BrokerFrame f;
    f.mutable_reply()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
    f.mutable_reply()->set_message("uid 5 holds 3 connections");
    (void)SendRecord(conn.get(), f.SerializeAsString(), {}, false);
  });
  ConnectOptions o;
  o.broker_socket = path;
  o.control_socket = dir / "control.sock";
  absl::StatusOr<Client> c = Client::Connect(o);
  refuse.join();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c.status().message(), "uid 5 holds 3 connections");
}

// A Unix socket's connect waits for room in a full backlog for as long as
// its send timeout says: for ever, before (a daemon not accepting, or any
// local process filling its backlog, hung Client::Connect).
TEST(ClientBrokerTest, ConnectingToAFullBacklogTimesOut) {
  testing::TempDir dir("fake");
  const std::string path = dir / "broker.sock";
  UniqueFd listener = Listen(path, 0);                       // never accepted from
  absl::StatusOr<UniqueFd> filler = ConnectSeqpacket(path);  // the backlog's one place
  ASSERT_TRUE(filler.ok()) << filler.status();
  ConnectOptions o;
  o.broker_socket = path;
  o.control_socket = dir / "control.sock";
  o.timeout = absl::Milliseconds(300);
  absl::Notification done;
  absl::Status status;
  const absl::Time start = absl::Now();
  std::thread connect([&] {
    status = Client::Connect(o).status();
    done.Notify();
  });
  if (!done.WaitForNotificationWithTimeout(absl::Seconds(5))) {
    ADD_FAILURE() << "Client::Connect still waits for room in the backlog after 5 s";
    // Room, so that it returns (its handshake then times out).
    UniqueFd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    done.WaitForNotification();
  }
  connect.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "backlog")) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

}  // namespace
}  // namespace halloc
