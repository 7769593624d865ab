// A buffer's standard metadata (Android's StandardMetadataType subset that
// can change after allocation): defaults, and the rules for setting one
// field. Pure functions; the core stores the result and checks who may set
// it (read-write holders only).
#ifndef HALLOC_SERVICE_METADATA_H_
#define HALLOC_SERVICE_METADATA_H_

#include <optional>

#include "absl/status/status.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc {

// Crop: every plane whole; dataspace UNKNOWN; blend mode unset. Blobs
// (no layout) have no crop.
v1::BufferMetadata DefaultMetadata(const std::optional<v1::BufferLayout>& layout);

// Sets field `type` of `metadata` from `value`, or says why not:
// INVALID_ARGUMENT for an immutable type, a negative dataspace, an unknown
// blend mode, or a crop that is not one non-empty rectangle per plane
// inside it. `metadata` is unchanged on error.
absl::Status SetMetadataField(v1::StandardMetadataType type, const v1::BufferMetadata& value,
                              const std::optional<v1::BufferLayout>& layout,
                              v1::BufferMetadata* metadata);

// Whether setting `type` takes read-write rights: the fields a producer
// describes its content with (dataspace, blend mode, crop), which a
// read-only consumer must not rewrite under it.
bool OwnerSetsField(v1::StandardMetadataType type);

}  // namespace halloc

#endif  // HALLOC_SERVICE_METADATA_H_
