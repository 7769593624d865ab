#include "clients/cli/args.h"

#include <limits>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "clients/cpp/halloc/base/rights.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/layout/format.h"

namespace halloc::cli {
namespace {

struct MetadataField {
  absl::string_view name;
  v1::StandardMetadataType type;
  absl::Status (*parse)(absl::Span<const std::string> values, v1::BufferMetadata* m);
};

absl::Status ParseDataspace(absl::Span<const std::string> values, v1::BufferMetadata* m) {
  if (values.size() != 1) return UsageError("set-metadata ID dataspace VALUE");
  ASSIGN_OR_RETURN(const int32_t v, ParseInt32(values[0], "dataspace"));
  m->set_dataspace(v);
  return absl::OkStatus();
}

absl::Status ParseBlendMode(absl::Span<const std::string> values, v1::BufferMetadata* m) {
  v1::BlendMode mode = v1::BLEND_MODE_INVALID;
  const bool ok = values.size() == 1 &&
                  v1::BlendMode_Parse(absl::StrCat("BLEND_MODE_",
                                                   absl::AsciiStrToUpper(absl::StrReplaceAll(
                                                       values[0], {{"-", "_"}}))),
                                      &mode) &&
                  mode != v1::BLEND_MODE_INVALID;
  if (!ok) return UsageError("set-metadata ID blend-mode none|premultiplied|coverage");
  m->set_blend_mode(mode);
  return absl::OkStatus();
}

absl::Status ParseCrop(absl::Span<const std::string> values, v1::BufferMetadata* m) {
  for (const std::string& v : values) {
    std::vector<std::string> parts = absl::StrSplit(v, ',');
    int32_t n[4];
    bool ok = parts.size() == 4;
    for (size_t i = 0; ok && i < 4; ++i) ok = absl::SimpleAtoi(parts[i], &n[i]);
    if (!ok) {
      return UsageError(absl::StrCat("crop rectangle '", v,
                                     "' is not LEFT,TOP,RIGHT,BOTTOM (one per plane)"));
    }
    v1::Rect* r = m->add_crop();
    r->set_left(n[0]);
    r->set_top(n[1]);
    r->set_right(n[2]);
    r->set_bottom(n[3]);
  }
  return absl::OkStatus();
}

constexpr MetadataField kMetadataFields[] = {
    {"dataspace", v1::METADATA_DATASPACE, ParseDataspace},
    {"blend-mode", v1::METADATA_BLEND_MODE, ParseBlendMode},
    {"crop", v1::METADATA_CROP, ParseCrop},
};

}  // namespace

absl::StatusOr<uint64_t> ParseId(absl::string_view arg, absl::string_view what) {
  uint64_t id;
  if (!absl::SimpleAtoi(arg, &id)) {
    return UsageError(absl::StrCat("'", arg, "' is not a ", what, " id"));
  }
  return id;
}

absl::StatusOr<int32_t> ParseInt32(absl::string_view arg, absl::string_view what) {
  absl::string_view digits = arg;
  const bool negative = absl::ConsumePrefix(&digits, "-");
  int64_t v = 0;
  const bool hex = absl::StartsWithIgnoreCase(digits, "0x");
  const bool ok = !digits.empty() && digits[0] != '-' && digits[0] != '+' &&
                  (hex ? absl::SimpleHexAtoi(digits, &v) : absl::SimpleAtoi(digits, &v));
  if (negative) v = -v;
  if (!ok || v < std::numeric_limits<int32_t>::min() ||
      v > std::numeric_limits<int32_t>::max()) {
    return UsageError(absl::StrCat(what, " '", arg, "' is not a 32-bit integer"));
  }
  return static_cast<int32_t>(v);
}

absl::StatusOr<v1::CpuAccess> ParseAccess(absl::string_view arg) {
  if (arg.empty()) return v1::CPU_ACCESS_UNSPECIFIED;
  for (CpuAccess a : {CpuAccess::kNone, CpuAccess::kRead, CpuAccess::kReadWrite}) {
    if (CpuAccessName(a) == arg) return ToProto(a);
  }
  return UsageError(absl::StrCat("--access '", arg, "' is none, read or read-write"));
}

absl::StatusOr<v1::BufferDescriptor> DescriptorFromOptions(const Options& o) {
  v1::BufferDescriptor d;
  d.set_name(o.name);
  if (!o.usage.empty()) {
    absl::StatusOr<uint64_t> bits = usage::Parse(o.usage);
    if (!bits.ok()) return UsageError(bits.status().message());
    d.set_usage(*bits);
  }
  if (!o.format.empty() && o.size != 0) {
    return UsageError("give either --size or --format, not both");
  }
  if (!o.format.empty()) {
    absl::StatusOr<uint32_t> fourcc = format::ParseName(o.format);
    if (!fourcc.ok()) return UsageError(fourcc.status().message());
    v1::ImageDescriptor* image = d.mutable_image();
    image->set_format(*fourcc);
    image->set_width(o.width);
    image->set_height(o.height);
    image->set_layer_count(o.layers);
  } else if (o.size != 0) {
    d.set_size(o.size);
  } else {
    return UsageError("need a descriptor: --size BYTES, or --format F --width W --height H");
  }
  return d;
}

absl::StatusOr<MetadataValue> ParseMetadata(absl::string_view field,
                                            absl::Span<const std::string> values) {
  for (const MetadataField& f : kMetadataFields) {
    if (f.name != field) continue;
    MetadataValue out{f.type, {}};
    RETURN_IF_ERROR(f.parse(values, &out.value));
    return out;
  }
  return UsageError(
      absl::StrCat("set-metadata: '", field, "' is not dataspace, blend-mode or crop"));
}

}  // namespace halloc::cli
