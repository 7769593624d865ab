#include "service/connection_limits.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace halloc {

uint32_t DefaultMaxConnections() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return 4096;
  return static_cast<uint32_t>(std::max<rlim_t>(lim.rlim_cur / 8, 16));
}

absl::Status AdmitConnection(const Policy& policy, uid_t uid, ConnectionCounts held,
                             absl::string_view what) {
  const bool admin = uid == 0 || uid == ::getuid();
  const uint32_t per_uid = policy.max_sessions_per_uid() != 0
                               ? policy.max_sessions_per_uid()
                               : kDefaultMaxConnectionsPerUid;
  const uint32_t total =
      policy.max_sessions() != 0 ? policy.max_sessions() : DefaultMaxConnections();
  if (!admin && held.of_uid >= per_uid) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", uid, " holds ", held.of_uid, " ", what,
                     "; the limit per uid is ", per_uid, " (policy sessions.max_per_uid)"));
  }
  if (held.total >= total + (admin ? kAdminConnectionReserve : 0)) {
    return absl::ResourceExhaustedError(absl::StrCat("hallocd holds ", held.total, " ", what,
                                                     "; the limit is ", total,
                                                     " (policy sessions.max_total)"));
  }
  return absl::OkStatus();
}

}  // namespace halloc
