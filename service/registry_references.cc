// The references imports make on a session's hold of a buffer (registry.h,
// Import): how an import's delivery went (SettleImport), and one reference
// taken off a hold (DropReference: an undelivered import, or a client's
// give-back through Release), the hold going with its last. Each names the
// hold by its generation, so that one of a hold gone since is not taken
// off a newer one.
#include "absl/synchronization/mutex.h"
#include "service/registry.h"

namespace halloc {

void Registry::SettleImport(uint64_t session_id, uint64_t buffer_id, uint64_t generation,
                            bool delivered) {
  // Delivered, its reference stays (the client gives it back) and it counts
  // among the buffer's imports (BufferInfo.imports_total: an import whose
  // fd never left is none); not, its reference is taken back, unless its
  // hold went meanwhile (DropReference checks the generation, never 0 for
  // an import).
  absl::MutexLock lock(&mu_);
  if (delivered) {
    if (auto b = buffers_.find(buffer_id); b != buffers_.end()) ++b->second->imports_total;
    return;
  }
  auto h = holdings_.find(session_id);
  if (h != holdings_.end()) DropReference(session_id, h->second, buffer_id, generation);
}

void Registry::DropReference(uint64_t session_id, Holding& holding, uint64_t buffer_id,
                             uint64_t generation) {
  if (!holding.buffers.contains(buffer_id)) return;
  auto r = import_refs_.find({session_id, buffer_id});
  // Of another hold (each an import reached has its entry until it goes):
  // that one went, and its references with it.
  if (generation != 0 && (r == import_refs_.end() || r->second.generation != generation)) return;
  if (r == import_refs_.end() || r->second.refs <= 1) {
    DropHold(session_id, holding, buffer_id);  // its entry too
    return;
  }
  --r->second.refs;
}

}  // namespace halloc
