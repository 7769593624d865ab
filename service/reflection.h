// grpc.reflection.v1alpha.ServerReflection for hallocd, so that generic
// gRPC tools (grpcurl, grpc_cli) can list and call its services.
//
// gRPC's own (the grpc++_reflection plugin) serves any number of streams,
// each holding a thread of the sync server for as long as its client keeps
// it open: 40 idle ones from one unprivileged client took all 32 of
// hallocd's, and every other gRPC call got "Server Threadpool Exhausted".
// This one answers the same requests from the generated descriptor pool,
// at most kMaxStreams streams at a time and kMaxStreamsPerUid for one uid
// (RESOURCE_EXHAUSTED beyond; service/util/stream_slots.h), like
// HealthService's watches. A place is held only while the stream is used:
// one without a request for StreamTimeLimits::reflection_idle, or open for
// reflection_lifetime, is ended (DEADLINE_EXCEEDED); else a client that
// opened two and asked nothing kept them, and two uids so took reflection
// from everyone.
#ifndef HALLOC_SERVICE_REFLECTION_H_
#define HALLOC_SERVICE_REFLECTION_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "service/calls_per_uid.h"
#include "service/control_peers.h"
#include "service/stream_deadlines.h"
#include "service/util/stream_slots.h"

namespace halloc {

class ReflectionService final : public grpc::reflection::v1alpha::ServerReflection::Service {
 public:
  static constexpr int kMaxStreams = 4;
  static constexpr int kMaxStreamsPerUid = 2;

  // `services`: the full names list_services answers (the server's). With
  // `peers` (hallocd's), streams are counted per uid too; with `calls`
  // (hallocd's), one its uid's limit did not admit is refused. `times`:
  // how long a stream may be idle, and last (its reflection_*).
  explicit ReflectionService(std::vector<std::string> services,
                             std::shared_ptr<const ControlPeers> peers = nullptr,
                             const CallsPerUid* calls = nullptr,
                             const StreamTimeLimits& times = {});

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<grpc::reflection::v1alpha::ServerReflectionResponse,
                               grpc::reflection::v1alpha::ServerReflectionRequest>* stream)
      override;

  // The answer to one request; `sent`: the files this stream has already
  // sent (a file's dependencies go once per stream).
  grpc::reflection::v1alpha::ServerReflectionResponse Answer(
      const grpc::reflection::v1alpha::ServerReflectionRequest& req,
      std::set<std::string>* sent) const;

 private:
  const std::vector<std::string> services_;
  const std::shared_ptr<const ControlPeers> peers_;
  const CallsPerUid* const calls_;
  const absl::Duration idle_;
  const absl::Duration lifetime_;
  const absl::Duration cool_down_;  // StreamTimeLimits::overstay_cool_down
  // One uid's streams may hold places for a quarter of lifetime_ in all
  // within twice lifetime_ (StreamSlots::PlaceBudget).
  StreamSlots streams_;
  // Ends streams past idle_ or lifetime_ (their handlers wait in Read(),
  // which only a cancel from another thread ends).
  StreamDeadlines deadlines_;
};

}  // namespace halloc

#endif  // HALLOC_SERVICE_REFLECTION_H_
