#include "service/reflection.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/util/clock.h"

namespace halloc {
namespace {

namespace v1alpha = grpc::reflection::v1alpha;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

// `file`, then whichever of its dependencies (transitively) this stream
// has not sent yet.
void AddFile(const FileDescriptor* file, std::set<std::string>* sent, bool requested,
             v1alpha::FileDescriptorResponse* out) {
  if (!sent->insert(file->name()).second && !requested) return;
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  out->add_file_descriptor_proto(proto.SerializeAsString());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFile(file->dependency(i), sent, false, out);
  }
}

void SetError(v1alpha::ServerReflectionResponse* resp, grpc::StatusCode code, std::string message) {
  v1alpha::ErrorResponse* e = resp->mutable_error_response();
  e->set_error_code(static_cast<int32_t>(code));
  e->set_error_message(std::move(message));
}

}  // namespace

ReflectionService::ReflectionService(std::vector<std::string> services,
                                     std::shared_ptr<const ControlPeers> peers,
                                     const CallsPerUid* calls, const StreamTimeLimits& times)
    : services_(std::move(services)),
      peers_(std::move(peers)),
      calls_(calls),
      idle_(times.reflection_idle),
      lifetime_(times.reflection_lifetime),
      cool_down_(times.overstay_cool_down),
      streams_("reflection streams", kMaxStreams, kMaxStreamsPerUid,
               {times.reflection_lifetime / 4, 2 * times.reflection_lifetime}) {}

v1alpha::ServerReflectionResponse ReflectionService::Answer(
    const v1alpha::ServerReflectionRequest& req, std::set<std::string>* sent) const {
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  v1alpha::ServerReflectionResponse resp;
  resp.set_valid_host(req.host());
  *resp.mutable_original_request() = req;
  const FileDescriptor* file = nullptr;
  std::string missing;
  switch (req.message_request_case()) {
    case v1alpha::ServerReflectionRequest::kListServices:
      for (const std::string& name : services_) {
        resp.mutable_list_services_response()->add_service()->set_name(name);
      }
      return resp;
    case v1alpha::ServerReflectionRequest::kFileByFilename:
      file = pool->FindFileByName(req.file_by_filename());
      missing = absl::StrCat("no file ", req.file_by_filename());
      break;
    case v1alpha::ServerReflectionRequest::kFileContainingSymbol:
      file = pool->FindFileContainingSymbol(req.file_containing_symbol());
      missing = absl::StrCat("no symbol ", req.file_containing_symbol());
      break;
    case v1alpha::ServerReflectionRequest::kFileContainingExtension: {
      const v1alpha::ExtensionRequest& ext = req.file_containing_extension();
      const auto* type = pool->FindMessageTypeByName(ext.containing_type());
      const auto* field =
          type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
      if (field != nullptr) file = field->file();
      missing =
          absl::StrCat("no extension ", ext.extension_number(), " of ", ext.containing_type());
      break;
    }
    case v1alpha::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const auto* type = pool->FindMessageTypeByName(req.all_extension_numbers_of_type());
      if (type == nullptr) {
        SetError(&resp, grpc::StatusCode::NOT_FOUND,
                 absl::StrCat("no type ", req.all_extension_numbers_of_type()));
        return resp;
      }
      std::vector<const google::protobuf::FieldDescriptor*> fields;
      pool->FindAllExtensions(type, &fields);
      v1alpha::ExtensionNumberResponse* out = resp.mutable_all_extension_numbers_response();
      out->set_base_type_name(type->full_name());
      for (const auto* f : fields) out->add_extension_number(f->number());
      return resp;
    }
    default:
      SetError(&resp, grpc::StatusCode::UNIMPLEMENTED, "unknown reflection request");
      return resp;
  }
  if (file == nullptr) {
    SetError(&resp, grpc::StatusCode::NOT_FOUND, std::move(missing));
    return resp;
  }
  AddFile(file, sent, /*requested=*/true, resp.mutable_file_descriptor_response());
  return resp;
}

grpc::Status ReflectionService::ServerReflectionInfo(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<v1alpha::ServerReflectionResponse, v1alpha::ServerReflectionRequest>*
        stream) {
  if (grpc::Status a = AdmittedBy(calls_, ctx); !a.ok()) return a;
  absl::StatusOr<StreamSlots::Slot> slot =
      streams_.Take(ControlPeers::LimitUid(peers_.get(), ctx->peer()));
  if (!slot.ok()) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(slot.status().message()));
  }
  // Ended idle_ after its last answer (or its start), or lifetime_ after
  // its start, whichever is sooner.
  const absl::Time end = MonotonicNow() + lifetime_;
  auto due = [&] { return std::min(MonotonicNow() + idle_, end); };
  const std::string ended = absl::StrCat(
      "a reflection stream ends after ", absl::FormatDuration(idle_), " without a request, or ",
      absl::FormatDuration(lifetime_),
      " in all (hallocd's limits: it holds one of a few places for such streams); open another");
  StreamDeadlines::Deadline deadline =
      deadlines_.Watch(ctx, due(), grpc::StatusCode::DEADLINE_EXCEEDED, ended);
  std::set<std::string> sent;
  v1alpha::ServerReflectionRequest req;
  while (stream->Read(&req)) {
    if (!stream->Write(Answer(req, &sent))) break;
    deadline.Set(due());
  }
  // (Cut: its client has that status already.)
  if (!deadline.Stop()) {
    slot->Overstayed(cool_down_);
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, ended);
  }
  return grpc::Status::OK;
}

}  // namespace halloc
