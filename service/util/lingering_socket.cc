#include "service/util/lingering_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "clients/cpp/halloc/base/os_error.h"

namespace halloc {

absl::StatusOr<LingeringSocket> LingeringSocket::Create(absl::Duration wait) {
  LingeringSocket s;
  const int small = 4096;
  s.listener.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.listener) return ErrnoStatus(errno, "socket");
  // Inherited by the connection it will not accept.
  ::setsockopt(s.listener.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(s.listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(s.listener.get(), 1) != 0 ||
      ::getsockname(s.listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus(errno, "TCP listener on loopback");
  }
  s.sock.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.sock) return ErrnoStatus(errno, "socket");
  ::setsockopt(s.sock.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  if (::connect(s.sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, "connect to the loopback listener");
  }
  // Fill both buffers: what is left can only wait.
  std::string chunk(64 * 1024, 'x');
  for (;;) {
    const ssize_t n = ::send(s.sock.get(), chunk.data(), chunk.size(), MSG_DONTWAIT);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    return ErrnoStatus(errno, "send");
  }
  const struct linger l{1, static_cast<int>(std::max<int64_t>(1, absl::ToInt64Seconds(wait)))};
  if (::setsockopt(s.sock.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l)) != 0) {
    return ErrnoStatus(errno, "setsockopt(SO_LINGER)");
  }
  return s;
}

}  // namespace halloc
