// The references imports make on a session's hold of a buffer (registry.h,
// Import): how an import's delivery went (SettleImport), and one reference
// taken off a hold (DropReference: an undelivered import, or a client's
// give-back through Release), the hold going with its last.
#include "absl/synchronization/mutex.h"
#include "service/registry.h"

namespace halloc {

void Registry::SettleImport(uint64_t session_id, uint64_t buffer_id, uint64_t arrival,
                            bool delivered) {
  absl::MutexLock lock(&mu_);
  auto r = import_refs_.find({session_id, buffer_id});
  if (r == import_refs_.end() || r->second.serial != arrival) return;
  --r->second.under_way;
  if (delivered) {
    if (r->second.plain()) import_refs_.erase(r);
    return;
  }
  auto h = holdings_.find(session_id);
  if (h != holdings_.end()) DropReference(session_id, h->second, buffer_id);
}

void Registry::DropReference(uint64_t session_id, Holding& holding, uint64_t buffer_id) {
  if (!holding.buffers.contains(buffer_id)) return;
  auto r = import_refs_.find({session_id, buffer_id});
  if (r == import_refs_.end() || r->second.refs <= 1) {
    DropHold(session_id, holding, buffer_id);  // its entry too
    return;
  }
  --r->second.refs;
  if (r->second.plain()) import_refs_.erase(r);
}

}  // namespace halloc
