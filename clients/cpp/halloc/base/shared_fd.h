// SharedFd: one file descriptor with several users, closed when the last
// one goes (like libcamera's SharedFD). Copies share the fd; a user that
// needs an fd of its own (to pass on, or to outlive every other user
// without keeping them alive) takes Dup(), a new UniqueFd for the same open
// file description.
//
// Copying and destroying SharedFds is thread-safe; the fd's users must still
// agree on what they do with it.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_SHARED_FD_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_SHARED_FD_H_

#include <memory>

#include "absl/status/statusor.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

class SharedFd {
 public:
  SharedFd() = default;
  // Takes ownership of `fd` (an invalid UniqueFd makes an empty SharedFd).
  explicit SharedFd(UniqueFd fd);

  int get() const { return fd_ ? fd_->get() : -1; }
  bool is_valid() const { return fd_ != nullptr; }
  explicit operator bool() const { return is_valid(); }
  // How many SharedFds use the fd (0 when empty).
  long use_count() const { return fd_.use_count(); }

  // A new owner of a new fd for the same open file description (CLOEXEC).
  absl::StatusOr<UniqueFd> Dup() const;
  // Stops using the fd. The last user gets the fd itself back; while others
  // still use it, a Dup(). Empty afterwards either way.
  [[nodiscard]] absl::StatusOr<UniqueFd> Release();

 private:
  std::shared_ptr<UniqueFd> fd_;
};

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_SHARED_FD_H_
