#include "service/systemd/liveness.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
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

LivenessProbe::LivenessProbe(const std::string& control_socket, std::string broker_socket)
    : broker_socket_(std::move(broker_socket)),
      channel_(grpc::CreateChannel(absl::StrCat("unix:", control_socket),
                                   grpc::InsecureChannelCredentials())),
      stub_(std::make_unique<grpc::GenericStub>(channel_)) {}

LivenessProbe::~LivenessProbe() = default;

absl::Status LivenessProbe::Check(absl::Duration timeout) {
  RETURN_IF_ERROR(CheckBroker(timeout));
  return CheckControl(timeout);
}

absl::Status LivenessProbe::CheckBroker(absl::Duration timeout) const {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(broker_socket_));
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoStatus(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("connect(", broker_socket_, ")"));
  }
  // The broker's first record (a Hello, or a refusal over a limit) shows
  // its thread accepted us; closing then ends the unverified connection.
  pollfd pfd{fd.get(), POLLIN, 0};
  const int n = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
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
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  // HealthCheckRequest{} serializes to nothing, but a default ByteBuffer is
  // no message at all (gRPC aborts): one empty slice.
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub_->UnaryCall(&ctx, kHealthCheck, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) {
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
