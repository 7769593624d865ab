// A separate client process for the integration tests (gRPC must not be
// used in a forked child of a gRPC process, so tests exec this instead).
//
//   peer CONTROL BROKER import-describe TOKEN
//                                          import, print its BufferInfo
//                                          (binary protobuf) on stdout
//   peer CONTROL BROKER crash              allocate 4 buffers, then abort()
//   peer CONTROL BROKER identity UID TOKEN BUFFER_ID
//                                          drop to UID, check the daemon sees
//                                          UID and that TOKEN/BUFFER_ID, which
//                                          belong to another uid, give nothing
// Exit code 0 means every check held; otherwise the number of the failed one.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "clients/cpp/halloc/client.h"

namespace {

using ::absl::StatusCode;

int Crash(const halloc::ConnectOptions& opts) {
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  if (!c->Allocate(halloc::BlobDescriptor(1 << 20), 4).ok()) return 2;
  abort();
}

int Identity(const halloc::ConnectOptions& opts, uid_t uid,
             const std::string& token, uint64_t id) {
  if (setgid(uid) != 0 || setuid(uid) != 0) return 10;
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  if (c->uid() != uid) return 2;  // kernel-verified
  // A grant made for another uid is useless here, even with its token.
  if (c->Import(token).status().code() != StatusCode::kPermissionDenied) return 3;
  // Another client's buffer is invisible and untouchable.
  if (c->Describe(id).status().code() != StatusCode::kNotFound) return 4;
  if (c->Release(id).code() != StatusCode::kNotFound) return 5;
  if (c->Share(id, uid).status().code() != StatusCode::kNotFound) return 6;
  if (c->List(true).status().code() != StatusCode::kPermissionDenied) return 7;
  absl::StatusOr<halloc::Buffer> own = c->Allocate(halloc::BlobDescriptor(4096));
  if (!own.ok() || own->info().owner_uid() != uid) return 8;
  return 0;
}

// Imports TOKEN and prints the BufferInfo as this process sees it.
int ImportDescribe(const halloc::ConnectOptions& opts, const std::string& token) {
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect(opts);
  if (!c.ok()) return 1;
  absl::StatusOr<halloc::Buffer> b = c->Import(token);
  if (!b.ok()) return 2;
  absl::StatusOr<halloc::v1::BufferInfo> info = c->Describe(b->id());
  if (!info.ok()) return 3;
  std::string out;
  info->SerializeToString(&out);
  fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return 64;
  halloc::ConnectOptions opts;
  opts.control_socket = argv[1];
  opts.broker_socket = argv[2];
  const std::string cmd = argv[3];
  if (cmd == "crash") return Crash(opts);
  if (cmd == "import-describe" && argc == 5) return ImportDescribe(opts, argv[4]);
  uint32_t uid;
  uint64_t id;
  if (cmd == "identity" && argc == 7 && absl::SimpleAtoi(argv[4], &uid) &&
      absl::SimpleAtoi(argv[6], &id)) {
    return Identity(opts, uid, argv[5], id);
  }
  return 64;
}
