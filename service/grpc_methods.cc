#include "service/grpc_methods.h"

#include <grpc/slice.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace halloc {

grpc::Status ParseRequest(grpc_byte_buffer* payload, google::protobuf::MessageLite* msg) {
  if (payload == nullptr) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("no request message (a ", msg->GetTypeName(), ")"));
  }
  grpc_byte_buffer_reader reader;
  // Fails only for a payload it cannot decompress: the caller's too.
  bool parsed = grpc_byte_buffer_reader_init(&reader, payload) != 0;
  if (parsed) {
    grpc_slice bytes = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    parsed = msg->ParseFromArray(GRPC_SLICE_START_PTR(bytes),
                                 static_cast<int>(GRPC_SLICE_LENGTH(bytes)));
    grpc_slice_unref(bytes);
  }
  grpc_byte_buffer_destroy(payload);
  if (parsed) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("the request does not parse as a ", msg->GetTypeName()));
}

}  // namespace halloc
