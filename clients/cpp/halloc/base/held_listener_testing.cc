#include "clients/cpp/halloc/base/held_listener_testing.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "gtest/gtest.h"

namespace halloc::testing {

HeldListener::HeldListener(const std::string& path, int type, std::function<void(UniqueFd)> serve)
    : path_(path), type_(type), serve_(std::move(serve)) {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  EXPECT_TRUE(addr.ok()) << addr.status();
  if (!addr.ok()) return;
  fd_.reset(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)), 0);
  EXPECT_EQ(::listen(fd_.get(), 0), 0);  // room for one waiting connection
}

HeldListener::~HeldListener() {
  ::shutdown(fd_.get(), SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
}

bool HeldListener::Fill() {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path_);
  if (!addr.ok()) return false;
  filler_.reset(::socket(AF_UNIX, type_ | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (::connect(filler_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return false;
  }
  UniqueFd next(::socket(AF_UNIX, type_ | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  return ::connect(next.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 &&
         errno == EAGAIN;
}

void HeldListener::Open(absl::Duration delay) {
  thread_ = std::thread([this, delay] {
    absl::SleepFor(delay);
    for (;;) {
      UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!conn) return;  // shut down
      serve_(std::move(conn));
    }
  });
}

}  // namespace halloc::testing
