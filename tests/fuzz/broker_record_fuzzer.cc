// Broker records (clients/cpp/halloc/base/scm.h) and the messages in them
// (proto/halloc/v1/broker.proto), read the way hallocd and the client
// library read them.
//
// Input: [flags] then up to 4 records, each [hdr][len lo][len hi][payload].
//   flags bit 0: receive non-blocking (as hallocd's broker and the client's
//                fd reader do); else blocking (the client's handshake)
//   flags bit 1: close the sending end after the last record
//   flags bit 2: send through SendRecord (its limits apply) instead of a
//                raw sendmsg
//   flags bit 3: SO_PASSCRED on the receiver (as hallocd's broker socket)
//   hdr bits 0-2: fds to attach: 0, 1, 2, 3, 4, 8, 64 (the most a record
//                 may carry) or 65 (one too many)
//   hdr bit 3:    pad the payload to over kMaxRecordBytes (truncated bytes)
//   len:          payload bytes (little endian), cut to what input is left
//
// Invariants: ReceiveRecord returns exactly what was sent (bytes, fd count,
// each fd close-on-exec and the same file; the sender's pid/uid/gid with
// SO_PASSCRED, none without) or, for an oversized record, DATA_LOSS (whose
// truncated-record payload, if any, is the intact bytes); an empty record
// reads as "peer closed" (UNAVAILABLE) without SO_PASSCRED and as an empty
// record (with the sender's credentials) with it, as documented; an empty queue is
// RESOURCE_EXHAUSTED (non-blocking) and a closed peer UNAVAILABLE; no fd
// leaks on any path, including the client's frame handling; a BrokerRequest
// (daemon side) or BrokerFrame (client side) that parses re-serializes to a
// fixed point.
//
// The first two records also go, on a second socket, to the client
// library's own handshake (clients/cpp/halloc/broker_conn.h Handshake): it
// succeeds exactly for a Hello of the current protocol version followed by
// an OK reply with a Welcome, answers the Hello with a Verify echoing its
// challenge, and otherwise fails cleanly.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "halloc/v1/broker.pb.h"
#include "tests/fuzz/check.h"

namespace halloc {
namespace {

constexpr size_t kFdCounts[8] = {0, 1, 2, 3, 4, 8, kMaxFdsPerRecord,
                                 kMaxFdsPerRecord + 1};

int OpenFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n - 1;  // the directory's own fd
}

// The file every attached fd refers to.
struct Base {
  int fd;
  ino_t ino;
  Base() {
    fd = ::memfd_create("halloc-fuzz", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0);
    struct stat st;
    FUZZ_CHECK(::fstat(fd, &st) == 0);
    ino = st.st_ino;
  }
};

const Base& TheBase() {
  static const Base* base = new Base();
  return *base;
}

struct Sent {
  std::string bytes;
  size_t fds;
};

// Raw sendmsg: no limits on our side, so the receiver meets oversized
// records too.
bool SendRaw(int sock, const std::string& bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (fds.size() + 1)));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) return false;
  FUZZ_CHECK(static_cast<size_t>(n) == bytes.size(), "short seqpacket send");
  return true;
}

// A message that parses must re-serialize to a fixed point.
template <typename Message>
void CheckRoundTrip(const Message& m) {
  const std::string once = m.SerializeAsString();
  FUZZ_CHECK(once.size() == m.ByteSizeLong());
  Message again;
  FUZZ_CHECK(again.ParseFromString(once), "re-serialized message does not parse");
  FUZZ_CHECK(again.SerializeAsString() == once, "serialization is no fixed point");
  FUZZ_CHECK(again.kind_case() == m.kind_case());
  (void)m.ShortDebugString();
}

// The daemon (service/broker.cc Broker::Handle) reads a client's record as
// a BrokerRequest (the handshake's Verify, fast-path Allocate, Import,
// Share and Release)
// and refuses one that carries fds. Returns whether it would act on it.
bool DaemonTakes(const Record& rec) {
  v1::BrokerRequest req;
  if (!req.ParseFromString(rec.bytes)) return false;
  CheckRoundTrip(req);
  return rec.fds.empty();
}

// The client (clients/cpp/halloc/client.cc, Impl::File) reads the daemon's
// records as BrokerFrames; the first one of a connection must be the Hello.
// After that, a reply keeps its fds when it is not an Allocate reply with
// another number of buffers; other frames must describe exactly their fds
// (buffer: one; buffers: one per entry). Accepted fds move into `pending`
// by buffer id (a later fd for the same id replaces, and so closes, the
// earlier one, as the client's map does). Returns whether accepted.
bool ClientTakes(Record& rec, bool first, std::map<uint64_t, UniqueFd>& pending,
                 std::vector<UniqueFd>& with_replies) {
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(rec.bytes)) return false;
  CheckRoundTrip(frame);
  if (first) return frame.has_hello();
  if (frame.has_reply()) {
    const v1::BrokerReply& reply = frame.reply();
    if (reply.has_allocate() &&
        static_cast<size_t>(reply.allocate().buffers_size()) != rec.fds.size()) {
      return false;
    }
    for (UniqueFd& fd : rec.fds) with_replies.push_back(std::move(fd));
    return true;
  }
  std::vector<uint64_t> ids;
  if (frame.has_buffer()) ids.push_back(frame.buffer().buffer_id());
  for (const v1::BufferFd& b : frame.buffers().buffers()) ids.push_back(b.buffer_id());
  if (ids.size() != rec.fds.size()) return false;
  for (size_t i = 0; i < ids.size(); ++i) pending[ids[i]] = std::move(rec.fds[i]);
  return true;
}

void CheckReceived(const absl::StatusOr<Record>& rec, const Sent& sent, bool passcred) {
  const bool oversized =
      sent.bytes.size() > kMaxRecordBytes || sent.fds > kMaxFdsPerRecord;
  if (oversized) {
    FUZZ_CHECK(rec.status().code() == absl::StatusCode::kDataLoss,
               absl::StrCat("oversized record (", sent.bytes.size(), " bytes, ",
                            sent.fds, " fds): ", rec.status().ToString()));
    // Where only the fds were cut, the intact bytes ride along.
    const auto bytes = rec.status().GetPayload(kTruncatedRecordPayload);
    if (bytes.has_value()) {
      FUZZ_CHECK(sent.bytes.size() <= kMaxRecordBytes,
                 "truncated bytes passed on as intact");
      FUZZ_CHECK(std::string(*bytes) == sent.bytes,
                 "the truncated record's bytes are not what was sent");
    }
    return;
  }
  if (sent.bytes.empty() && sent.fds == 0 && !passcred) {
    // Documented: without credentials a zero-length record cannot be told
    // from the peer's EOF (with them, it carries the sender's stamp).
    FUZZ_CHECK(rec.status().code() == absl::StatusCode::kUnavailable,
               rec.status().ToString());
    return;
  }
  FUZZ_CHECK(rec.ok(), rec.status().ToString());
  FUZZ_CHECK(rec->bytes == sent.bytes, "bytes differ from what was sent");
  FUZZ_CHECK(rec->fds.size() == sent.fds,
             absl::StrCat(rec->fds.size(), " fds received, ", sent.fds, " sent"));
  for (const UniqueFd& fd : rec->fds) {
    FUZZ_CHECK(fd.is_valid());
    const int flags = ::fcntl(fd.get(), F_GETFD);
    FUZZ_CHECK(flags >= 0 && (flags & FD_CLOEXEC), "received fd is not CLOEXEC");
    struct stat st;
    FUZZ_CHECK(::fstat(fd.get(), &st) == 0 && st.st_ino == TheBase().ino,
               "received fd is not the file sent");
  }
}

// Handshake as the client library runs it, on records queued beforehand
// (a zero timeout: everything it may read is already there).
void CheckHandshake(const std::vector<Sent>& records, UniqueFd receiver,
                    const UniqueFd& sender) {
  // What Handshake must conclude, from broker.proto.
  bool expect_ok = records.size() >= 2;
  v1::BrokerFrame hello, welcome;
  for (size_t i = 0; i < records.size() && i < 2; ++i) {
    const Sent& s = records[i];
    const bool readable = s.bytes.size() <= kMaxRecordBytes &&
                          s.fds <= kMaxFdsPerRecord && !(s.bytes.empty() && s.fds == 0);
    v1::BrokerFrame& f = i == 0 ? hello : welcome;
    if (!readable || !f.ParseFromString(s.bytes)) expect_ok = false;
  }
  if (!hello.has_hello() || hello.hello().version() != kBrokerProtocolVersion) {
    expect_ok = false;
  }
  if (!welcome.has_reply() || welcome.reply().code() != 0 ||
      !welcome.reply().has_welcome()) {
    expect_ok = false;
  }
  absl::StatusOr<BrokerConnection> conn =
      Handshake(std::move(receiver), absl::ZeroDuration());
  if (std::getenv("HALLOC_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "handshake: %s\n", conn.status().ToString().c_str());
  }
  FUZZ_CHECK(conn.ok() == expect_ok,
             absl::StrCat("Handshake: ", conn.status().ToString(), "; expected ",
                          expect_ok ? "success" : "failure"));
  // Whenever it got as far as answering a Hello, the answer echoes it.
  absl::StatusOr<Record> verify = ReceiveRecord(sender.get(), true);
  if (conn.ok()) {
    FUZZ_CHECK(conn->fd.is_valid());
    FUZZ_CHECK(conn->hello.SerializeAsString() == hello.hello().SerializeAsString());
    FUZZ_CHECK(conn->welcome.SerializeAsString() ==
               welcome.reply().welcome().SerializeAsString());
    FUZZ_CHECK(verify.ok(), "no Verify sent: " + verify.status().ToString());
  }
  if (verify.ok()) {
    FUZZ_CHECK(hello.has_hello(), "Verify sent without a Hello");
    v1::BrokerRequest req;
    FUZZ_CHECK(req.ParseFromString(verify->bytes) && req.has_verify() &&
                   verify->fds.empty(), "malformed Verify");
    FUZZ_CHECK(req.verify().challenge() == hello.hello().challenge(),
               "Verify does not echo the challenge");
  } else if (conn.ok()) {
    FUZZ_CHECK(absl::IsResourceExhausted(verify.status()), verify.status().ToString());
  } else {  // a failed Handshake closes the socket
    if (absl::IsResourceExhausted(verify.status())) {
      // Not yet seen closed: once in ~13,000 runs (Linux 6.18; never on a
      // replay of that input) the peer still read as open just after the
      // close. A socket Handshake kept open would still fail here.
      (void)WaitReadable(sender.get(), 2000);
      verify = ReceiveRecord(sender.get(), true);
    }
    FUZZ_CHECK(absl::IsUnavailable(verify.status()), verify.status().ToString());
  }
}

void RunOne(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const uint8_t flags = data[0];
  const bool nonblocking = flags & 1;
  const bool close_sender = flags & 2;
  const bool use_send_record = flags & 4;
  const bool passcred = flags & 8;
  size_t pos = 1;

  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  UniqueFd receiver(sv[0]);
  UniqueFd sender(sv[1]);
  if (passcred) {  // as hallocd's broker socket
    const int one = 1;
    FUZZ_CHECK(::setsockopt(receiver.get(), SOL_SOCKET, SO_PASSCRED, &one,
                            sizeof(one)) == 0);
  }

  int hv[2];  // the handshake's socket
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, hv) == 0);
  UniqueFd hs_receiver(hv[0]);
  UniqueFd hs_sender(hv[1]);
  std::vector<Sent> hs_sent;

  std::vector<Sent> sent;
  while (pos + 3 <= size && sent.size() < 4) {
    const uint8_t hdr = data[pos];
    size_t len = data[pos + 1] | (size_t{data[pos + 2]} << 8);
    pos += 3;
    len = std::min(len, size - pos);
    Sent s{std::string(reinterpret_cast<const char*>(data + pos), len),
           kFdCounts[hdr & 7]};
    pos += len;
    if (hdr & 8) s.bytes.resize(kMaxRecordBytes + 1 + s.bytes.size(), '\0');
    std::vector<int> fds;
    for (size_t i = 0; i < s.fds; ++i) {
      fds.push_back(::fcntl(TheBase().fd, F_DUPFD_CLOEXEC, 0));
      FUZZ_CHECK(fds.back() >= 0, "out of fds");
    }
    bool ok;
    if (use_send_record) {
      absl::Status st = SendRecord(sender.get(), s.bytes, fds, true);
      const bool within =
          s.bytes.size() <= kMaxRecordBytes && s.fds <= kMaxFdsPerRecord;
      FUZZ_CHECK(st.ok() == within || absl::IsResourceExhausted(st),
                 absl::StrCat("SendRecord(", s.bytes.size(), " bytes, ", s.fds,
                              " fds): ", st.ToString()));
      if (!within) {
        FUZZ_CHECK(absl::IsInvalidArgument(st), st.ToString());
      }
      ok = st.ok();
    } else {
      ok = SendRaw(sender.get(), s.bytes, fds);
    }
    if (hs_sent.size() < 2 && SendRaw(hs_sender.get(), s.bytes, fds)) {
      hs_sent.push_back(s);
    }
    for (int fd : fds) ::close(fd);
    if (ok) sent.push_back(std::move(s));
  }
  if (close_sender) sender.reset();

  // Every record comes back in order, exactly as sent (or refused whole),
  // stamped with the sender's credentials when the receiver asked for them.
  std::vector<Record> received;
  for (const Sent& s : sent) {
    absl::StatusOr<Record> rec = ReceiveRecord(receiver.get(), nonblocking);
    CheckReceived(rec, s, passcred);
    if (!rec.ok()) continue;
    if (passcred) {
      FUZZ_CHECK(rec->creds.has_value(), "SO_PASSCRED but no credentials");
      FUZZ_CHECK(rec->creds->pid == ::getpid() && rec->creds->uid == ::getuid() &&
                     rec->creds->gid == ::getgid(),
                 "credentials are not the sender's");
    } else {
      FUZZ_CHECK(!rec->creds.has_value(), "credentials without SO_PASSCRED");
    }
    received.push_back(*std::move(rec));
  }
  // Then the queue is empty, or the peer is gone.
  {
    absl::StatusOr<Record> rec = ReceiveRecord(receiver.get(), true);
    if (close_sender && absl::IsResourceExhausted(rec.status())) {
      // Not yet seen closed: as after a failed Handshake (above), the
      // peer now and then still reads as open just after the close
      // (fresh58: once in some 36,000 runs on Linux 6.18; never on 200
      // replays of that input). One kept open would still fail here.
      (void)WaitReadable(receiver.get(), 2000);
      rec = ReceiveRecord(receiver.get(), true);
    }
    if (close_sender) {
      FUZZ_CHECK(rec.status().code() == absl::StatusCode::kUnavailable,
                 rec.status().ToString());
    } else {
      FUZZ_CHECK(rec.status().code() == absl::StatusCode::kResourceExhausted,
                 rec.status().ToString());
    }
  }
  if (close_sender) {
    absl::StatusOr<Record> rec = ReceiveRecord(receiver.get(), false);
    FUZZ_CHECK(rec.status().code() == absl::StatusCode::kUnavailable,
               rec.status().ToString());
  }

  // The same bytes as a client's request read by the daemon, and as the
  // daemon's frames read by a client (the first one as the Hello).
  std::map<uint64_t, UniqueFd> pending;
  std::vector<UniqueFd> with_replies;
  for (size_t i = 0; i < received.size(); ++i) {
    const bool acted = DaemonTakes(received[i]);
    FUZZ_CHECK(!acted || received[i].fds.empty());
    (void)ClientTakes(received[i], i == 0, pending, with_replies);
  }
  for (const auto& [id, fd] : pending) {
    FUZZ_CHECK(fd.is_valid(), absl::StrCat("pending fd for buffer ", id));
  }

  CheckHandshake(hs_sent, std::move(hs_receiver), hs_sender);
}

}  // namespace
}  // namespace halloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)halloc::TheBase();
  const int before = halloc::OpenFds();
  halloc::RunOne(data, size);
  const int after = halloc::OpenFds();
  FUZZ_CHECK(before == after,
             absl::StrCat("fd leak: ", before, " open before, ", after, " after"));
  return 0;
}
