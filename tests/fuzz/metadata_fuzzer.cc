// Metadata validation: Allocator::SetMetadata (service/allocator.cc: the
// DATASPACE / BLEND_MODE / CROP checks), through the public Allocator API on
// the memfd backend, with a fuzzed halloc.v1.SetMetadataRequest.
//
// Set up once: one session owns an NV12 64x48 (2 planes), a YUV420 33x17
// (3 planes, odd sizes), an ARGB8888 1x1 and a 4096-byte blob; a second
// session of the same uid imported the NV12 read-only. The request's
// buffer_id modulo 7 picks (session, buffer): 0-3 the owner's buffers, 4 the
// read-only import, 5 a buffer the importer does not hold, 6 an id nobody
// holds.
//
// Invariants: NOT_FOUND exactly for buffers the caller does not hold;
// immutable types INVALID_ARGUMENT; read-only holders PERMISSION_DENIED;
// otherwise accepted exactly when the value is valid (dataspace >= 0, a
// known blend mode, one crop rectangle per plane inside it; no crop for a
// blob), never INTERNAL; an accepted value is what Describe then shows (to
// every holder) and nothing else changed; a refused one changed nothing.
// After each input the previous metadata is restored, so every input runs
// against the same state.
#include <drm_fourcc.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "halloc/v1/allocator.pb.h"
#include "halloc/v1/types.pb.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"
#include "tests/fuzz/check.h"

namespace halloc {
namespace {

struct World {
  std::unique_ptr<Allocator> core;
  std::shared_ptr<Session> owner, peer;
  UniqueFd owner_end, peer_end;  // the clients' ends of the broker sockets
  uint64_t ids[4] = {};          // NV12, YUV420, ARGB8888, blob
};

std::shared_ptr<Session> Open(Allocator& core, UniqueFd* client_end) {
  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  client_end->reset(sv[1]);
  const uid_t uid = ::getuid();
  absl::StatusOr<std::shared_ptr<Session>> s =
      core.OpenSession({uid, ::getgid(), ::getpid(), "", std::nullopt},
                       std::make_shared<SocketFdChannel>(UniqueFd(sv[0])));
  FUZZ_CHECK(s.ok(), s.status().ToString());
  return *s;
}

// Reads and drops the fd records queued for a client.
void Drain(const UniqueFd& end) {
  for (;;) {
    absl::StatusOr<Record> rec = ReceiveRecord(end.get(), true);
    if (!rec.ok()) break;
  }
}

uint64_t AllocateImage(World& w, uint32_t fourcc, uint32_t width, uint32_t height) {
  v1::AllocateRequest req;
  req.mutable_desc()->set_name("fuzz");
  req.mutable_desc()->set_usage(0x33);  // CPU read/write often
  v1::ImageDescriptor* image = req.mutable_desc()->mutable_image();
  image->set_format(fourcc);
  image->set_width(width);
  image->set_height(height);
  absl::StatusOr<v1::AllocateResponse> resp = w.core->Allocate(*w.owner, req);
  FUZZ_CHECK(resp.ok() && resp->buffers_size() == 1, resp.status().ToString());
  return resp->buffers(0).id();
}

World& TheWorld() {
  static World* world = [] {
    auto* w = new World;
    w->core = std::make_unique<Allocator>(std::make_unique<MemfdBackend>("/nonexistent"),
                                          halloc::Limits());
    w->owner = Open(*w->core, &w->owner_end);
    w->peer = Open(*w->core, &w->peer_end);
    w->ids[0] = AllocateImage(*w, DRM_FORMAT_NV12, 64, 48);
    w->ids[1] = AllocateImage(*w, DRM_FORMAT_YUV420, 33, 17);
    w->ids[2] = AllocateImage(*w, DRM_FORMAT_ARGB8888, 1, 1);
    v1::AllocateRequest blob;
    blob.mutable_desc()->set_size(4096);
    blob.mutable_desc()->set_usage(0x33);
    absl::StatusOr<v1::AllocateResponse> resp = w->core->Allocate(*w->owner, blob);
    FUZZ_CHECK(resp.ok(), resp.status().ToString());
    w->ids[3] = resp->buffers(0).id();
    v1::ShareRequest share;
    share.set_buffer_id(w->ids[0]);
    share.mutable_peer()->set_uid(::getuid());
    share.set_cpu_access(v1::CPU_ACCESS_READ);
    absl::StatusOr<v1::Grant> grant = w->core->Share(*w->owner, share);
    FUZZ_CHECK(grant.ok(), grant.status().ToString());
    absl::StatusOr<v1::ImportResponse> imported = w->core->Import(*w->peer, grant->token());
    FUZZ_CHECK(imported.ok(), imported.status().ToString());
    FUZZ_CHECK(imported->buffer().cpu_access() == v1::CPU_ACCESS_READ);
    Drain(w->owner_end);
    Drain(w->peer_end);
    return w;
  }();
  return *world;
}

bool Mutable(v1::StandardMetadataType t) {
  return t == v1::METADATA_DATASPACE || t == v1::METADATA_BLEND_MODE ||
         t == v1::METADATA_CROP;
}

// The crop rule of SetMetadataRequest (allocator.proto), restated.
bool ValidCrop(const v1::BufferMetadata& value, const v1::BufferInfo& info) {
  const v1::BufferLayout& l = info.layout();
  if (l.planes_size() == 0) return false;  // a blob
  if (value.crop_size() != l.planes_size()) return false;
  for (int i = 0; i < value.crop_size(); ++i) {
    const v1::Rect& r = value.crop(i);
    const int64_t w = l.planes(i).width_in_samples();
    const int64_t h = l.planes(i).height_in_samples();
    if (!(0 <= r.left() && r.left() < r.right() && r.right() <= w)) return false;
    if (!(0 <= r.top() && r.top() < r.bottom() && r.bottom() <= h)) return false;
  }
  return true;
}

std::string Bytes(const google::protobuf::Message& m) { return m.SerializeAsString(); }

void RunOne(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  v1::SetMetadataRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  const uint64_t pick = req.buffer_id() % 7;
  Session* session = w.owner.get();
  bool held = true, read_only = false;
  switch (pick) {
    case 0: case 1: case 2: case 3: req.set_buffer_id(w.ids[pick]); break;
    case 4: session = w.peer.get(); req.set_buffer_id(w.ids[0]); read_only = true; break;
    case 5: session = w.peer.get(); req.set_buffer_id(w.ids[1]); held = false; break;
    default: req.set_buffer_id(~uint64_t{0} - req.buffer_id() % 1000); held = false; break;
  }
  const std::string what = req.ShortDebugString();

  absl::StatusOr<v1::BufferInfo> before = w.core->Describe(*session, req.buffer_id());
  FUZZ_CHECK(before.ok() == held, what + ": " + before.status().ToString());
  absl::StatusOr<v1::BufferInfo> set = w.core->SetMetadata(*session, req);
  absl::StatusOr<v1::BufferInfo> after = w.core->Describe(*session, req.buffer_id());
  FUZZ_CHECK(after.ok() == held, what);
  if (std::getenv("HALLOC_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "%s -> %s\n", what.c_str(), set.status().ToString().c_str());
  }

  if (!held) {
    FUZZ_CHECK(absl::IsNotFound(set.status()), what + ": " + set.status().ToString());
    return;
  }
  const v1::BufferMetadata& value = req.value();
  bool valid;
  switch (req.type()) {
    case v1::METADATA_DATASPACE: valid = value.dataspace() >= 0; break;
    case v1::METADATA_BLEND_MODE: valid = v1::BlendMode_IsValid(value.blend_mode()); break;
    case v1::METADATA_CROP: valid = ValidCrop(value, *before); break;
    default: valid = false; break;
  }
  if (!Mutable(req.type())) {
    FUZZ_CHECK(absl::IsInvalidArgument(set.status()),
               "immutable type: " + what + ": " + set.status().ToString());
  } else if (read_only) {
    FUZZ_CHECK(absl::IsPermissionDenied(set.status()),
               "read-only holder: " + what + ": " + set.status().ToString());
  } else if (valid) {
    FUZZ_CHECK(set.ok(), "valid value refused: " + what + ": " + set.status().ToString());
  } else {
    FUZZ_CHECK(absl::IsInvalidArgument(set.status()),
               "invalid value: " + what + ": " + set.status().ToString());
  }

  if (!set.ok()) {
    FUZZ_CHECK(Bytes(*after) == Bytes(*before), "a refused SetMetadata changed " + what);
    return;
  }
  // The reply is the buffer as Describe shows it (less the holder list),
  // exactly the one field changed, and every holder sees it.
  {
    v1::BufferInfo described = *after;
    described.clear_holders();
    FUZZ_CHECK(Bytes(*set) == Bytes(described),
               what + ": reply " + set->ShortDebugString() + " vs Describe " +
                   described.ShortDebugString());
  }
  v1::BufferInfo expected = *before;
  v1::BufferMetadata* m = expected.mutable_metadata();
  switch (req.type()) {
    case v1::METADATA_DATASPACE: m->set_dataspace(value.dataspace()); break;
    case v1::METADATA_BLEND_MODE: m->set_blend_mode(value.blend_mode()); break;
    default:
      // The four numbers of each rectangle, never what else came with them
      // (unknown fields are not kept: a client could pad them).
      *m->mutable_crop() = value.crop();
      for (v1::Rect& r : *m->mutable_crop()) r.DiscardUnknownFields();
      break;
  }
  FUZZ_CHECK(Bytes(*after) == Bytes(expected),
             what + " -> " + after->metadata().ShortDebugString());
  if (req.buffer_id() == w.ids[0]) {
    absl::StatusOr<v1::BufferInfo> seen = w.core->Describe(*w.peer, w.ids[0]);
    FUZZ_CHECK(seen.ok() && Bytes(seen->metadata()) == Bytes(after->metadata()),
               "the read-only holder sees other metadata");
  }

  // Put the previous value back (also a SetMetadata that must succeed).
  v1::SetMetadataRequest undo;
  undo.set_buffer_id(req.buffer_id());
  undo.set_type(req.type());
  *undo.mutable_value() = before->metadata();
  absl::StatusOr<v1::BufferInfo> undone = w.core->SetMetadata(*session, undo);
  FUZZ_CHECK(undone.ok(), "restoring " + before->metadata().ShortDebugString() +
                              ": " + undone.status().ToString());
  absl::StatusOr<v1::BufferInfo> restored = w.core->Describe(*session, req.buffer_id());
  FUZZ_CHECK(restored.ok() && Bytes(*restored) == Bytes(*before), "restore did not restore");
}

}  // namespace
}  // namespace halloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  halloc::RunOne(data, size);
  return 0;
}
