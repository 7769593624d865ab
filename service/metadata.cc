#include "service/metadata.h"

#include "absl/strings/str_cat.h"

namespace halloc {
namespace {

absl::Status ValidateCrop(const v1::BufferMetadata& value,
                          const std::optional<v1::BufferLayout>& layout) {
  if (!layout) return absl::InvalidArgumentError("a blob buffer has no crop");
  if (value.crop_size() != layout->planes_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "crop has ", value.crop_size(), " rectangles; the buffer has ",
        layout->planes_size(), " planes"));
  }
  for (int i = 0; i < value.crop_size(); ++i) {
    const v1::Rect& r = value.crop(i);
    const v1::PlaneLayout& p = layout->planes(i);
    if (r.left() < 0 || r.top() < 0 || r.left() >= r.right() ||
        r.top() >= r.bottom() ||
        static_cast<uint32_t>(r.right()) > p.width_in_samples() ||
        static_cast<uint32_t>(r.bottom()) > p.height_in_samples()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "crop of plane ", i, " [", r.left(), ",", r.top(), ")-[", r.right(),
          ",", r.bottom(), ") is empty or outside its ", p.width_in_samples(),
          "x", p.height_in_samples(), " samples"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

v1::BufferMetadata DefaultMetadata(const std::optional<v1::BufferLayout>& layout) {
  v1::BufferMetadata m;
  if (!layout) return m;
  for (const v1::PlaneLayout& plane : layout->planes()) {
    v1::Rect* r = m.add_crop();
    r->set_right(static_cast<int32_t>(plane.width_in_samples()));
    r->set_bottom(static_cast<int32_t>(plane.height_in_samples()));
  }
  return m;
}

absl::Status SetMetadataField(v1::StandardMetadataType type, const v1::BufferMetadata& value,
                              const std::optional<v1::BufferLayout>& layout,
                              v1::BufferMetadata* metadata) {
  switch (type) {
    case v1::METADATA_DATASPACE:
      if (value.dataspace() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("dataspace ", value.dataspace(), " is negative"));
      }
      metadata->set_dataspace(value.dataspace());
      return absl::OkStatus();
    case v1::METADATA_BLEND_MODE:
      if (!v1::BlendMode_IsValid(value.blend_mode())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unknown blend mode ", static_cast<int>(value.blend_mode())));
      }
      metadata->set_blend_mode(value.blend_mode());
      return absl::OkStatus();
    case v1::METADATA_CROP: {
      absl::Status s = ValidateCrop(value, layout);
      if (!s.ok()) return s;
      // Field by field: a Rect's unknown fields, which protobuf keeps
      // (each 2-byte one an object of its own), must not be stored and
      // sent back with every description of the buffer.
      metadata->clear_crop();
      for (const v1::Rect& r : value.crop()) {
        v1::Rect* kept = metadata->add_crop();
        kept->set_left(r.left());
        kept->set_top(r.top());
        kept->set_right(r.right());
        kept->set_bottom(r.bottom());
      }
      return absl::OkStatus();
    }
    default:
      if (!v1::StandardMetadataType_IsValid(type)) {
        return absl::InvalidArgumentError(absl::StrCat("unknown metadata type ",
                                                       static_cast<int>(type)));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata ", v1::StandardMetadataType_Name(type), " (", static_cast<int>(type),
          ") is immutable; only DATASPACE, BLEND_MODE and CROP can be set"));
  }
}

bool OwnerSetsField(v1::StandardMetadataType type) {
  return type == v1::METADATA_DATASPACE || type == v1::METADATA_BLEND_MODE ||
         type == v1::METADATA_CROP;
}

}  // namespace halloc
