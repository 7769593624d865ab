// The AUDIT log line of a refused or failed request, shared by both request
// paths (gRPC and the broker). Denials and quota refusals are what an
// outsider triggers at will, so the lines are rate-limited per kind, and
// everything a client chose (its executable's path, names in the message) is
// escaped.
#ifndef HALLOC_SERVICE_AUDIT_H_
#define HALLOC_SERVICE_AUDIT_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "service/allocator.h"

namespace halloc {

// Logs `status` of `method` when it is a denial (PERMISSION_DENIED,
// UNAUTHENTICATED), a quota refusal (RESOURCE_EXHAUSTED) or INTERNAL.
// `caller` is who the request was judged as (null: the session's identity;
// both null: an unauthenticated caller). `path` is "grpc" or "broker".
void AuditFailure(absl::string_view path, absl::string_view method,
                  const Session* session, const Identity* caller,
                  const absl::Status& status);

}  // namespace halloc

#endif  // HALLOC_SERVICE_AUDIT_H_
