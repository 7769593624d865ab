// hallocctl's arguments: buffer and grant ids, descriptors, rights and
// metadata values, parsed from words and flags. Anything malformed is a
// UsageError (exit code 2): it never reaches hallocd. Values that parse
// but that hallocd must judge (a negative dataspace, a crop outside its
// plane, a format it cannot lay out) are sent as given.
#ifndef HALLOC_CLIENTS_CLI_ARGS_H_
#define HALLOC_CLIENTS_CLI_ARGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "clients/cli/flags.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc::cli {

// A decimal id; `what` ("buffer", "grant") names it in the error.
absl::StatusOr<uint64_t> ParseId(absl::string_view arg, absl::string_view what);

// Decimal or 0x hex, optionally negative.
absl::StatusOr<int32_t> ParseInt32(absl::string_view arg, absl::string_view what);

// --access: "" (UNSPECIFIED: the sharer's own), "none", "read", "read-write".
absl::StatusOr<v1::CpuAccess> ParseAccess(absl::string_view arg);

// --size, or --format/--width/--height/--layers; --usage, --name.
absl::StatusOr<v1::BufferDescriptor> DescriptorFromOptions(const Options& o);

// set-metadata's FIELD VALUE...:
//   dataspace N                        decimal or 0x hex
//   blend-mode none|premultiplied|coverage
//   crop L,T,R,B [L,T,R,B...]          one rectangle per plane
struct MetadataValue {
  v1::StandardMetadataType type;
  v1::BufferMetadata value;
};
absl::StatusOr<MetadataValue> ParseMetadata(absl::string_view field,
                                            absl::Span<const std::string> values);

}  // namespace halloc::cli

#endif  // HALLOC_CLIENTS_CLI_ARGS_H_
