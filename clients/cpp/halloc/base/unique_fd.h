// UniqueFd: the one owner of a file descriptor. Nothing outside this class
// calls close() on an fd it owns.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIQUE_FD_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIQUE_FD_H_

#include "absl/status/statusor.h"

namespace halloc {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd` (-1 for none).
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool is_valid() const { return fd_ >= 0; }
  explicit operator bool() const { return is_valid(); }

  // Gives up ownership; the caller now owns the returned fd.
  [[nodiscard]] int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the owned fd (if any) and owns `fd` instead.
  void reset(int fd = -1);

  // A new owner of a new fd for the same open file description (CLOEXEC).
  absl::StatusOr<UniqueFd> Dup() const;

 private:
  int fd_ = -1;
};

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_UNIQUE_FD_H_
