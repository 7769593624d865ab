#include "clients/cpp/halloc/base/shared_fd.h"

#include <utility>

namespace halloc {

SharedFd::SharedFd(UniqueFd fd) {
  if (fd) fd_ = std::make_shared<UniqueFd>(std::move(fd));
}

absl::StatusOr<UniqueFd> SharedFd::Dup() const {
  if (!fd_) return absl::FailedPreconditionError("no fd to dup");
  return fd_->Dup();
}

absl::StatusOr<UniqueFd> SharedFd::Release() {
  if (!fd_) return absl::FailedPreconditionError("no fd to release");
  std::shared_ptr<UniqueFd> mine = std::move(fd_);
  // Nobody else can start using it now (fd_ was the only way in from here),
  // so a count of one cannot grow behind our back.
  if (mine.use_count() == 1) return std::move(*mine);
  return mine->Dup();
}

}  // namespace halloc
