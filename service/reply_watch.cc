#include "service/reply_watch.h"

#include <glog/logging.h>
#include <grpcpp/server_context.h>

#include <algorithm>
#include <utility>

#include "service/util/clock.h"

namespace halloc {

using grpc::experimental::InterceptionHookPoints;

// How long a reply of a uid judged at once may wait before it counts: an
// honest one goes in microseconds.
constexpr absl::Duration kJudgedStuckAfter = absl::Milliseconds(1);

// One per call. gRPC runs a call's hooks one at a time, on the thread that
// serves it; its post-send hook runs on that thread, which waits for the
// send, before the call (and its context) can end. So a reply noted as
// waiting is always ended here while its context lives, and the watch's
// thread, which cancels under the watch's lock, never reaches a context
// that is going away.
class ReplyWatch::Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(ReplyWatch* watch, grpc::ServerContextBase* call) : watch_(watch), call_(call) {}
  ~Interceptor() override {
    if (waiting_) watch_->End(call_);  // never, short of a gRPC change
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE) && !waiting_) {
      if (!looked_up_) {
        on_ = ControlPeers::CallOn(watch_->peers_.get(), call_->peer());
        looked_up_ = true;
      }
      if (watch_->Begin(call_, on_.limit_uid, on_.connection)) {
        waiting_ = true;
      } else {
        // Its connection is judged at once and its uid at its limit:
        // cancelled here, on this thread, before the send waits (the
        // watch's thread would take a wake-up to do it, ~1 ms, and a flood
        // of such calls reopened as fast as they end would keep every
        // thread taken meanwhile). The cancel hook it runs asks for nothing
        // of this interceptor's.
        call_->TryCancel();
        watch_->CountCancelled();
      }
    }
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_SEND_MESSAGE) && waiting_) {
      waiting_ = false;
      watch_->End(call_);
    }
    m->Proceed();
  }

 private:
  ReplyWatch* const watch_;
  grpc::ServerContextBase* const call_;
  bool waiting_ = false;
  bool looked_up_ = false;
  ControlPeers::Call on_;
};

class ReplyWatch::Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(ReplyWatch* watch) : watch_(watch) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(watch_, info->server_context());
  }

 private:
  ReplyWatch* const watch_;
};

ReplyWatch::ReplyWatch(Options options, std::shared_ptr<const ControlPeers> peers)
    : options_(options), peers_(std::move(peers)), thread_([this] { Run(); }) {}

ReplyWatch::~ReplyWatch() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> ReplyWatch::NewFactory() {
  return std::make_unique<Factory>(this);
}

bool ReplyWatch::Begin(grpc::ServerContextBase* call, std::optional<uid_t> uid,
                       std::string connection) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = MonotonicNow();
  auto judged = judged_at_once_.find(connection);
  const bool at_once = judged != judged_at_once_.end() && judged->second > now;
  if (at_once) {
    // Its uid's stuck replies are at the limit already: cancelled now (its
    // handler has run; only the reply is lost). Other replies of the
    // connection count only once stuck, as before, if sooner.
    auto stuck = by_uid_.find(uid);
    if (stuck != by_uid_.end() && stuck->second >= options_.per_uid) return false;
  }
  const absl::Time count_at = now + (at_once ? kJudgedStuckAfter : options_.stuck_after);
  waiting_[call] = Waiting{uid, std::move(connection), now, count_at};
  next_ = std::min(next_, count_at);
  return true;
}

void ReplyWatch::CountCancelled() {
  absl::MutexLock lock(&mu_);
  ++cancelled_;
}

void ReplyWatch::Forget(const Waiting& w) {
  if (!w.counted) return;
  if (--by_uid_[w.uid] == 0) by_uid_.erase(w.uid);
}

void ReplyWatch::End(grpc::ServerContextBase* call) {
  absl::MutexLock lock(&mu_);
  auto it = waiting_.find(call);
  if (it == waiting_.end()) return;  // cancelled by the watch already
  Forget(it->second);
  waiting_.erase(it);
}

absl::Time ReplyWatch::Sweep(absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  absl::erase_if(judged_at_once_, [now](const auto& j) { return j.second <= now; });
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    Waiting& w = it->second;
    bool cancel = now - w.since >= options_.timeout;
    if (!cancel && !w.counted && now >= w.count_at) {
      int& n = by_uid_[w.uid];
      if (n < options_.per_uid) {
        ++n;
        w.counted = true;
      } else {
        cancel = true;
      }
    }
    if (!cancel) {
      next = std::min(next, w.counted ? w.since + options_.timeout : w.count_at);
      ++it;
      continue;
    }
    // Its thread waits in gRPC for the send; cancelling ends that wait.
    // TryCancel runs the call's cancel hook here, which touches nothing of
    // the interceptor's (it asks only for the send hooks, and proceeds).
    it->first->TryCancel();
    ++cancelled_;
    judged_at_once_[w.connection] = now + 2 * options_.timeout;
    LOG_EVERY_N(WARNING, 100) << "gRPC: cancelled a call whose client did not read its reply ("
                              << (w.counted ? "waited too long" : "its uid's limit of waiting replies")
                              << "; " << google::COUNTER << " such so far)";
    Forget(w);
    waiting_.erase(it++);
  }
  return next;
}

void ReplyWatch::Run() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    // Asleep until the earliest time a reply is due to be counted or
    // cancelled, or a Begin brings that forward.
    const absl::Time deadline = next_;
    auto changed = [this, deadline]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || next_ < deadline;
    };
    // (A timeout, not a deadline: absl's deadlines are the wall clock's.)
    mu_.AwaitWithTimeout(absl::Condition(&changed), deadline - MonotonicNow());
    if (stop_) break;
    const absl::Time now = MonotonicNow();
    if (now >= next_) next_ = Sweep(now);
  }
}

int ReplyWatch::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

uint64_t ReplyWatch::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

}  // namespace halloc
