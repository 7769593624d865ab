#include "clients/cpp/halloc/broker_conn.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unix_address.h"

namespace halloc {

absl::StatusOr<v1::BrokerFrame> NextFrame(int fd, absl::Time deadline, std::vector<UniqueFd>* fds) {
  // Whole milliseconds that fit poll's int: an infinite or very long
  // timeout waits INT_MAX ms (~25 days), never a wrapped negative time.
  const int64_t ms = std::clamp<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(deadline - absl::Now(), absl::Milliseconds(1))), 0,
      std::numeric_limits<int>::max());
  RETURN_IF_ERROR(WaitReadable(fd, static_cast<int>(ms)));
  ASSIGN_OR_RETURN(Record rec, ReceiveRecord(fd, false));
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(rec.bytes)) {
    return absl::UnavailableError("hallocd broker sent a malformed frame");
  }
  if (fds != nullptr) *fds = std::move(rec.fds);
  return frame;
}

namespace {

// Time a connect and handshake need after a wait for the connect rate.
constexpr absl::Duration kRetryMargin = absl::Milliseconds(50);

absl::BitGen& BitGen() {
  thread_local absl::BitGen gen;
  return gen;
}

}  // namespace

absl::Status ReplyStatus(const v1::BrokerReply& reply) {
  if (reply.code() == 0) return absl::OkStatus();
  return absl::Status(StatusCodeFromWire(reply.code()), reply.message());
}

absl::StatusOr<UniqueFd> ConnectSeqpacket(const std::string& path, absl::Duration timeout) {
  return ConnectUnix(path, SOCK_SEQPACKET, timeout, "hallocd broker");
}

namespace {

// Handshake's, by `deadline`; a refusal that passes by itself (the uid's
// connect rate) sets `retry_after`.
absl::StatusOr<BrokerConnection> HandshakeBy(UniqueFd fd, absl::Time deadline,
                                             absl::Duration* retry_after) {
  BrokerConnection conn;
  ASSIGN_OR_RETURN(v1::BrokerFrame hello, NextFrame(fd.get(), deadline));
  if (hello.has_reply()) {  // refused before any session
    const absl::Status refused = ReplyStatus(hello.reply());
    if (!refused.ok()) *retry_after = absl::Milliseconds(hello.reply().retry_after_ms());
    RETURN_IF_ERROR(refused);
  }
  if (!hello.has_hello()) {
    return absl::UnavailableError("hallocd broker sent no hello");
  }
  if (hello.hello().version() != kBrokerProtocolVersion) {
    return absl::UnavailableError(absl::StrCat(
        "hallocd speaks broker protocol ", hello.hello().version(),
        "; this client speaks ", kBrokerProtocolVersion));
  }
  conn.hello = hello.hello();
  v1::BrokerRequest verify;
  verify.mutable_verify()->set_challenge(conn.hello.challenge());
  RETURN_IF_ERROR(SendRecord(fd.get(), verify.SerializeAsString(), {}, false));
  ASSIGN_OR_RETURN(v1::BrokerFrame welcome, NextFrame(fd.get(), deadline));
  if (!welcome.has_reply()) {
    return absl::UnavailableError("hallocd broker sent no reply to Verify");
  }
  RETURN_IF_ERROR(ReplyStatus(welcome.reply()));
  if (!welcome.reply().has_welcome()) {
    return absl::UnavailableError("hallocd broker's reply to Verify has no welcome");
  }
  conn.welcome = welcome.reply().welcome();
  conn.fd = std::move(fd);
  return conn;
}

}  // namespace

absl::StatusOr<BrokerConnection> Handshake(UniqueFd fd, absl::Duration timeout) {
  absl::Duration ignored;
  return HandshakeBy(std::move(fd), absl::Now() + timeout, &ignored);
}

absl::StatusOr<BrokerConnection> ConnectBroker(const std::string& path,
                                               absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    ASSIGN_OR_RETURN(UniqueFd fd, ConnectSeqpacket(path, std::max(deadline - absl::Now(),
                                                                  absl::ZeroDuration())));
    absl::Duration retry_after = absl::ZeroDuration();
    absl::StatusOr<BrokerConnection> conn = HandshakeBy(std::move(fd), deadline, &retry_after);
    // Refused for connecting faster than this uid's rate: again once it
    // has room (and a little later, at random, so that a crowd of this
    // uid's waiters does not come back at once), if that leaves time to
    // connect within the timeout; else the refusal.
    if (conn.ok() || retry_after <= absl::ZeroDuration()) return conn;
    const absl::Duration wait =
        retry_after * absl::Uniform(BitGen(), 1.0, 1.5) + absl::Milliseconds(1);
    if (absl::Now() + wait + kRetryMargin >= deadline) return conn;
    absl::SleepFor(wait);
  }
}

}  // namespace halloc
