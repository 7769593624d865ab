#include "service/systemd/liveness.h"

#include <fcntl.h>
#include <grpcpp/create_channel_posix.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"

namespace halloc {
namespace {

constexpr char kHealthCheck[] = "/grpc.health.v1.Health/Check";
// HealthCheckResponse{status: SERVING}: field 1, varint 1. The request
// HealthCheckRequest{service: ""} (the server as a whole) is empty.
constexpr char kServing[] = {0x08, 0x01};

}  // namespace

LivenessProbe::LivenessProbe(std::string control_socket, std::string broker_socket)
    : control_socket_(std::move(control_socket)), broker_socket_(std::move(broker_socket)) {}

absl::Status LivenessProbe::Check(absl::Duration timeout) {
  RETURN_IF_ERROR(CheckBroker(timeout));
  return CheckControl(timeout);
}

absl::Status LivenessProbe::CheckBroker(absl::Duration timeout) const {
  // Waits for room in the backlog: any local user can keep it full
  // (connecting and closing in a loop), and a probe that gave up at once
  // there (a non-blocking connect: EAGAIN) had systemd kill a hallocd that
  // served everyone.
  // One deadline for the connect and the greeting (notify.cc counts on
  // `timeout` per check).
  const absl::Time deadline = absl::Now() + timeout;
  ASSIGN_OR_RETURN(UniqueFd fd,
                   ConnectUnix(broker_socket_, SOCK_SEQPACKET, timeout, "hallocd broker"));
  // The broker's first record (a Hello, or a refusal over a limit) shows
  // its thread accepted us; closing then ends the unverified connection.
  pollfd pfd{fd.get(), POLLIN, 0};
  const absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
  const int n = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)));
  if (n < 0) return ErrnoStatus(errno, "poll(broker)");
  if (n == 0) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the broker sent nothing within ", absl::FormatDuration(timeout)));
  }
  char byte;
  if (::recv(fd.get(), &byte, 1, MSG_DONTWAIT | MSG_TRUNC) <= 0) {
    return absl::UnavailableError("the broker closed the connection unread");
  }
  return absl::OkStatus();
}

absl::Status LivenessProbe::CheckControl(absl::Duration timeout) {
  // A connection of its own each time, made as the broker's (a channel
  // left to connect by itself gives up at once on a full backlog, then
  // waits out its reconnect backoff, up to minutes, failing every probe).
  const absl::Time deadline = absl::Now() + timeout;  // for the connect and the call
  ASSIGN_OR_RETURN(UniqueFd fd,
                   ConnectUnix(control_socket_, SOCK_STREAM, timeout, "hallocd control socket"));
  // gRPC's endpoints expect a non-blocking fd.
  if (::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK)");
  }
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateInsecureChannelFromFd("hallocd-liveness", fd.release());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  // HealthCheckRequest{} serializes to nothing, but a default ByteBuffer is
  // no message at all (gRPC aborts): one empty slice.
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&ctx, kHealthCheck, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();  // the deadline bounds it
  if (!status.ok()) {
    return absl::UnavailableError(
        absl::StrCat("control socket: Health/Check: ", status.error_message()));
  }
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  if (bytes != std::string(kServing, sizeof(kServing))) {
    return absl::UnavailableError("control socket: Health/Check: not SERVING");
  }
  return absl::OkStatus();
}

}  // namespace halloc
