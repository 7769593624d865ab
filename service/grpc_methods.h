// How hallocd's gRPC methods read their requests.
//
// gRPC 1.51's generated handlers parse a request through protobuf's
// MessageLite traits before any handler runs, and answer bytes that are
// not the method's message with INTERNAL and an empty message: by
// allocator.proto's table "hallocd's own call failed, nothing for the
// caller to fix". ParsedUnaryHandler is gRPC's RpcMethodHandler with its
// own parse: such a request (or a unary call with no message at all) is
// INVALID_ARGUMENT naming the message. AllocatorService registers its
// methods with it (grpc_service.cc); streams keep gRPC's handlers (a part
// that does not parse ends the stream, which then ends without its `last`
// part and releases nothing).
#ifndef HALLOC_SERVICE_GRPC_METHODS_H_
#define HALLOC_SERVICE_GRPC_METHODS_H_

#include <google/protobuf/message_lite.h>
#include <grpc/byte_buffer.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/method_handler.h>
#include <grpcpp/support/status.h>

#include <new>

namespace halloc {

// Parses `payload` (gRPC's, which this takes and destroys; null: the call
// came with no message) into `msg`: INVALID_ARGUMENT naming msg's type
// when there is none or it does not parse.
grpc::Status ParseRequest(grpc_byte_buffer* payload, google::protobuf::MessageLite* msg);

template <class Service, class Request, class Response>
class ParsedUnaryHandler final : public grpc::internal::MethodHandler {
 public:
  using Method = grpc::Status (Service::*)(grpc::ServerContext*, const Request*, Response*);
  ParsedUnaryHandler(Service* service, Method method) : service_(service), method_(method) {}

  void RunHandler(const HandlerParameter& param) override {
    Response response;
    grpc::Status status = param.status;
    if (status.ok()) {
      auto* request = static_cast<Request*>(param.request);
      status = grpc::internal::CatchingFunctionHandler([&] {
        return (service_->*method_)(static_cast<grpc::ServerContext*>(param.server_context),
                                    request, &response);
      });
      request->~Request();
    }
    grpc::internal::UnaryRunHandlerHelper(
        param, static_cast<google::protobuf::MessageLite*>(&response), status);
  }

  // As gRPC's own: the request lives in the call's arena.
  void* Deserialize(grpc_call* call, grpc_byte_buffer* payload, grpc::Status* status,
                    void** /*handler_data*/) override {
    auto* request =
        new (grpc::g_core_codegen_interface->grpc_call_arena_alloc(call, sizeof(Request))) Request;
    *status = ParseRequest(payload, request);
    if (status->ok()) return request;
    request->~Request();
    return nullptr;
  }

 private:
  Service* const service_;
  const Method method_;
};

// A new handler of `method` of `service`, for its request and response.
template <class Service, class Request, class Response>
grpc::internal::MethodHandler* NewParsedUnaryHandler(
    Service* service,
    grpc::Status (Service::*method)(grpc::ServerContext*, const Request*, Response*)) {
  return new ParsedUnaryHandler<Service, Request, Response>(service, method);
}

}  // namespace halloc

#endif  // HALLOC_SERVICE_GRPC_METHODS_H_
