#include "service/calls_per_uid.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "service/connection_limits.h"
#include "service/util/clock.h"

namespace halloc {

using grpc::experimental::InterceptionHookPoints;

// One per call, from its start to its end (gRPC destroys a call's
// interceptors once it is done, after its reply and status went).
class CallsPerUid::Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(CallsPerUid* calls, grpc::ServerContextBase* call) : calls_(calls), call_(call) {}
  ~Interceptor() override {
    if (admitted_) calls_->End(uid_);
    if (refused_) calls_->Refused(call_, false);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    // Before the handler runs (its metadata is the call's first event).
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA) &&
        !admitted_ && !refused_) {
      uid_ = ControlPeers::LimitUid(calls_->peers_.get(), call_->peer());
      admitted_ = calls_->Admit(uid_);
      if (!admitted_) {
        refused_ = true;
        calls_->Refused(call_, true);
      }
    }
    m->Proceed();
  }

 private:
  CallsPerUid* const calls_;
  grpc::ServerContextBase* const call_;
  std::optional<uid_t> uid_;
  bool admitted_ = false;
  bool refused_ = false;
};

class CallsPerUid::Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(CallsPerUid* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(calls_, info->server_context());
  }

 private:
  CallsPerUid* const calls_;
};

CallsPerUid::CallsPerUid(int per_uid, std::shared_ptr<const ControlPeers> peers, OnFlood on_flood)
    : per_uid_(per_uid), peers_(std::move(peers)), on_flood_(std::move(on_flood)) {}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> CallsPerUid::NewFactory() {
  return std::make_unique<Factory>(this);
}

bool CallsPerUid::Limited(std::optional<uid_t> uid) const {
  return uid.has_value() && !IsOperatorUid(*uid);
}

bool CallsPerUid::Admit(std::optional<uid_t> uid) {
  if (!Limited(uid)) return true;
  bool floods = false;
  {
    absl::MutexLock lock(&mu_);
    int& n = in_flight_[*uid];
    if (n < per_uid_) {
      ++n;
      return true;
    }
    if (n == 0) in_flight_.erase(*uid);
    const absl::Time now = MonotonicNow();
    Refusals& r = refusals_[*uid];
    if (now - r.since > kFloodWindow) r = Refusals{now, 0};
    if (++r.count > kFloodRefusals) {
      floods = true;
      refusals_.erase(*uid);
    }
    // Windows long over are forgotten (one entry per uid refused lately).
    if (refusals_.size() > 1024) {
      absl::erase_if(refusals_,
                     [now](const auto& e) { return now - e.second.since > kFloodWindow; });
    }
  }
  if (floods && on_flood_) on_flood_(*uid);
  return false;
}

void CallsPerUid::End(std::optional<uid_t> uid) {
  if (!Limited(uid)) return;
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(*uid);
  if (it == in_flight_.end()) return;
  if (--it->second <= 0) in_flight_.erase(it);
}

int CallsPerUid::in_flight(uid_t uid) const {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(uid);
  return it == in_flight_.end() ? 0 : it->second;
}

void CallsPerUid::Refused(const grpc::ServerContextBase* call, bool refused) {
  absl::MutexLock lock(&mu_);
  if (refused) {
    refused_.insert(call);
  } else {
    refused_.erase(call);
  }
}

grpc::Status AdmittedBy(const CallsPerUid* calls, const grpc::ServerContextBase* call) {
  if (calls == nullptr) return grpc::Status::OK;
  const absl::Status s = calls->Admitted(call);
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(s.message()));
}

absl::Status CallsPerUid::Admitted(const grpc::ServerContextBase* call) const {
  absl::MutexLock lock(&mu_);
  if (!refused_.contains(call)) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("this uid has ", per_uid_,
                   " gRPC calls in flight, the most one uid may have at once (hallocd's "
                   "server threads are shared by every user); retry when one ends"));
}

}  // namespace halloc
