// Helpers of the broker's tests (broker_test.cc, broker_identity_test.cc,
// broker_slow_lane_test.cc).
#ifndef HALLOC_SERVICE_BROKER_TEST_UTIL_H_
#define HALLOC_SERVICE_BROKER_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "halloc/v1/broker.pb.h"

namespace halloc {

// One request on `sock` and the record that answers it (within 5 s).
struct Answer {
  v1::BrokerReply reply;
  std::vector<UniqueFd> fds;
};
inline absl::StatusOr<Answer> Ask(int sock, const v1::BrokerRequest& req) {
  RETURN_IF_ERROR(SendRecord(sock, req.SerializeAsString(), {}, false));
  RETURN_IF_ERROR(WaitReadable(sock, 5000));
  ASSIGN_OR_RETURN(Record rec, ReceiveRecord(sock, false));
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(rec.bytes) || !frame.has_reply()) {
    return absl::DataLossError("not a reply");
  }
  return Answer{std::move(*frame.mutable_reply()), std::move(rec.fds)};
}

// One fast-path Allocate of `count` buffers of `size` bytes; the reply's
// status and its fds once it came (within 5 s), or DEADLINE_EXCEEDED.
inline absl::Status AllocateOn(int sock, uint64_t size, size_t* fds, uint32_t count = 1) {
  v1::BrokerRequest req;
  req.set_request_id(1);
  if (count != 1) req.mutable_allocate()->set_count(count);
  req.mutable_allocate()->mutable_desc()->set_size(size);
  req.mutable_allocate()->mutable_desc()->set_name("lane");
  ASSIGN_OR_RETURN(Answer a, Ask(sock, req));
  *fds = a.fds.size();
  return ReplyStatus(a.reply);
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_BROKER_TEST_UTIL_H_
