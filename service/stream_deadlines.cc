#include "service/stream_deadlines.h"

#include <grpc/grpc.h>

#include <algorithm>
#include <utility>

#include "service/util/clock.h"

namespace halloc {

StreamDeadlines::Deadline::Deadline(Deadline&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), id_(other.id_) {}

bool StreamDeadlines::Deadline::Set(absl::Time when) {
  return owner_ == nullptr || owner_->Set(id_, when);
}

bool StreamDeadlines::Deadline::Stop() {
  if (owner_ == nullptr) return true;
  const bool in_time = owner_->Stop(id_);
  owner_ = nullptr;
  return in_time;
}

StreamDeadlines::StreamDeadlines() : thread_([this] { Run(); }) {}

StreamDeadlines::~StreamDeadlines() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

StreamDeadlines::Deadline StreamDeadlines::Watch(grpc::ServerContext* call, absl::Time when,
                                                 grpc::StatusCode code, std::string message) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  watched_.emplace(id, Watched{call, when, code, std::move(message)});
  next_ = std::min(next_, when);
  return Deadline(this, id);
}

bool StreamDeadlines::Set(uint64_t id, absl::Time when) {
  absl::MutexLock lock(&mu_);
  Watched& w = watched_.at(id);
  if (w.cut) return false;
  w.when = when;
  // Sooner: the thread wakes for it. Later: it wakes for the old time,
  // finds nothing due and sleeps again.
  next_ = std::min(next_, when);
  return true;
}

bool StreamDeadlines::Stop(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = watched_.find(id);
  const bool cut = it->second.cut;
  watched_.erase(it);
  return !cut;
}

void StreamDeadlines::Run() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    const absl::Time now = MonotonicNow();
    absl::Time next = absl::InfiniteFuture();
    for (auto& [id, w] : watched_) {
      if (w.cut) continue;
      if (w.when > now) {
        next = std::min(next, w.when);
        continue;
      }
      // Its handler is still in the call (it stops the Deadline, under
      // this lock, before it returns), so the call lives. Thread-safe in
      // gRPC's core; a Read() waiting ends with false. Cut once: the
      // status first given is the one the client sees.
      grpc_call_cancel_with_status(w.call->c_call(), static_cast<grpc_status_code>(w.code),
                                   w.message.c_str(), nullptr);
      w.cut = true;
    }
    next_ = next;
    // Asleep until the earliest deadline, or one sooner is set.
    auto changed = [this, next]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || next_ < next; };
    // (A timeout, not a deadline: absl's deadlines are the wall clock's.)
    mu_.AwaitWithTimeout(absl::Condition(&changed), next - MonotonicNow());
  }
}

}  // namespace halloc
