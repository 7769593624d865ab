#include "service/layout/layout.h"

#include <drm_fourcc.h>
#include <xf86drm.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/usage.h"
#include "service/layout/checked.h"
#include "service/layout/format.h"

namespace halloc::layout {
namespace {

using format::FormatInfo;
using format::PlaneInfo;
using internal::Gcd;
using internal::Lcm;
using internal::U64;
using v1::BufferLayout;
using v1::ImageDescriptor;

// Alignments in checked 64-bit form.
struct Align64 {
  U64 stride = 1;
  U64 height = 1;
  U64 plane = 1;
};

U64 AtLeastOne(uint32_t v) { return v == 0 ? 1 : v; }

Align64 Merge(Alignment a, Alignment b) {
  return {Lcm(AtLeastOne(a.stride), AtLeastOne(b.stride)),
          Lcm(AtLeastOne(a.height), AtLeastOne(b.height)),
          Lcm(AtLeastOne(a.plane), AtLeastOne(b.plane))};
}

std::string Summary(const ImageDescriptor& image) {
  return absl::StrFormat("%s %ux%u x%u layers", format::Name(image.format()),
                         image.width(), image.height(),
                         image.layer_count() == 0 ? 1 : image.layer_count());
}

absl::StatusOr<const FormatInfo*> LookupFormat(uint32_t fourcc) {
  if (fourcc == format::kBlob) {
    return absl::InvalidArgumentError(
        "format 0 (BLOB) has no image layout: ask for a size-only buffer");
  }
  const FormatInfo* f = format::Find(fourcc);
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("format ", format::Name(fourcc), " is not supported"));
  }
  return f;
}

// The extra alignment `modifier` needs; LINEAR and "none given" need none.
absl::StatusOr<Alignment> ModifierAlignment(uint64_t modifier,
                                            const Options& options) {
  if (modifier == DRM_FORMAT_MOD_LINEAR || modifier == DRM_FORMAT_MOD_INVALID) {
    return Alignment{};
  }
  for (const ModifierRule& rule : options.modifiers) {
    if (rule.modifier == modifier) return rule.alignment;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "modifier ", ModifierName(modifier), " not supported by any backend"));
}

absl::Status CheckDimensions(const ImageDescriptor& image, const Limits& l) {
  if (image.width() == 0 || image.height() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: width and height must be non-zero", Summary(image)));
  }
  if (image.width() > l.max_dimension || image.height() > l.max_dimension) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: width and height must be at most %u",
                        Summary(image), l.max_dimension));
  }
  if (image.layer_count() > l.max_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: at most %u layers", Summary(image), l.max_layers));
  }
  return absl::OkStatus();
}

// Pixels per block of plane `p`, counted in luma pixels.
U64 BlockPixels(const PlaneInfo& p) { return U64(p.h_sub) * p.block_width; }

// Plane `i`'s stride is plane 0's times num/den (a fixed ratio).
struct Ratio {
  U64 num;
  U64 den;
};
Ratio StrideRatio(const FormatInfo& f, int i) {
  U64 num = U64(f.planes[i].block_bytes) * BlockPixels(f.planes[0]);
  U64 den = U64(f.planes[0].block_bytes) * BlockPixels(f.planes[i]);
  U64 g = Gcd(num, den);
  return {num / g, den / g};
}

// What a usage promises that the layout cannot give: see layout.h.
absl::Status CheckUsage(const FormatInfo& f, const ImageDescriptor& image, uint64_t usage,
                        const Alignment& by_usage, const Alignment& mod) {
  if (f.android_yv12) {
    // Android's formula (c_size = c_stride * height / 2, chroma right
    // after luma) assumes even sizes, and has no room for padded rows: a
    // device writing whole 64-row CTBs or reading 16-row MCUs would run
    // into the chroma planes and past the buffer.
    if (image.width() % 2 != 0 || image.height() % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(Summary(image), ": YV12 (Android's layout) needs an even width and height"));
    }
    if (by_usage.height > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          Summary(image), ": YV12 keeps Android's fixed plane formula, which has no room for the ",
          by_usage.height, "-row alignment this usage's devices need; use NV12 or YUV420"));
    }
    if (mod.stride > 1 || mod.height > 1 || mod.plane > 1) {  // strides and offsets are fixed
      return absl::InvalidArgumentError(
          absl::StrCat(Summary(image),
                       ": YV12 keeps Android's fixed plane formula, which "
                       "leaves no room for a tiled modifier; use NV12 or YUV420"));
    }
  }
  if ((usage & usage::kGpuCubeMap) && std::max(image.layer_count(), 1u) % 6 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        Summary(image), ": GPU_CUBE_MAP needs a layer count that is a multiple of 6 (faces)"));
  }
  if (usage & usage::kGpuMipmapComplete) {
    return absl::InvalidArgumentError(
        absl::StrCat(Summary(image),
                     ": GPU_MIPMAP_COMPLETE needs the mip chain in the buffer, and halloc lays "
                     "out and describes the base level only"));
  }
  return absl::OkStatus();
}

// Strides of every plane for `width` pixels; see layout.h for the rules.
void PlanStrides(const FormatInfo& f, uint32_t width, U64 align,
                 U64 strides[format::kMaxPlanes]) {
  U64 granule = 1;
  for (int i = 0; i < f.num_planes; ++i) {
    granule = Lcm(granule, BlockPixels(f.planes[i]));
  }
  const PlaneInfo& p0 = f.planes[0];
  U64 row0 = U64(width).AlignUp(granule) / BlockPixels(p0) * p0.block_bytes;
  // A whole number of pixels (blocks) too: 3-byte RGB888 rows padded to
  // 64 bytes would be a fraction of a pixel, which no pixel stride states.
  U64 multiple = Lcm(Lcm(align, p0.min_stride_alignment), p0.block_bytes);
  for (int i = 1; i < f.num_planes; ++i) {
    Ratio r = StrideRatio(f, i);
    multiple = Lcm(multiple, r.den * (align / Gcd(align, r.num)));
  }
  strides[0] = row0.AlignUp(multiple);
  for (int i = 1; i < f.num_planes; ++i) {
    Ratio r = StrideRatio(f, i);
    U64 plane_align = Lcm(align, f.planes[i].min_stride_alignment);
    strides[i] = (strides[0] / r.den * r.num).AlignUp(plane_align);
  }
}

v1::PlaneLayout MakePlane(const PlaneInfo& p, const ImageDescriptor& image,
                          uint64_t offset, uint64_t stride, uint64_t size) {
  v1::PlaneLayout out;
  out.set_offset(offset);
  out.set_stride(stride);
  out.set_size(size);
  out.set_horizontal_subsampling(p.h_sub);
  out.set_vertical_subsampling(p.v_sub);
  out.set_width_in_samples(
      static_cast<uint32_t>(U64(image.width()).DivRoundUp(p.h_sub).value()));
  out.set_height_in_samples(
      static_cast<uint32_t>(U64(image.height()).DivRoundUp(p.v_sub).value()));
  out.set_sample_increment_bits(p.sample_increment_bits);
  for (int c = 0; c < p.num_components; ++c) {
    v1::PlaneComponent* comp = out.add_components();
    comp->set_type(p.components[c].type);
    comp->set_offset_bits(p.components[c].offset_bits);
    comp->set_size_bits(p.components[c].size_bits);
  }
  return out;
}

// Places the planes of one layer and all layers; checks the size limits.
// `tile_rows`: a tiled modifier's tile height, which each plane's rows are
// a whole number of (a subsampled plane's share of the image's rows need
// not be).
absl::StatusOr<BufferLayout> Assemble(const FormatInfo& f, const ImageDescriptor& image,
                                      Align64 in_layer, U64 layer_align, U64 tile_rows,
                                      const Limits& limits) {
  U64 strides[format::kMaxPlanes];
  PlanStrides(f, image.width(), in_layer.stride, strides);
  U64 rows = U64(image.height()).AlignUp(in_layer.height);
  U64 offsets[format::kMaxPlanes], sizes[format::kMaxPlanes];
  U64 end = 0;
  for (int i = 0; i < f.num_planes; ++i) {
    offsets[i] = end.AlignUp(in_layer.plane);
    sizes[i] = strides[i] * rows.DivRoundUp(f.planes[i].v_sub).AlignUp(tile_rows);
    end = offsets[i] + sizes[i];
  }
  uint32_t layers = image.layer_count() == 0 ? 1 : image.layer_count();
  U64 layer_stride = end.AlignUp(layer_align);
  U64 total = layer_stride * layers;
  if (total.overflowed()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Summary(image), ": size overflows 64 bits"));
  }
  if (total.value() > limits.max_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: needs %u bytes, more than the maximum %u", Summary(image),
        total.value(), limits.max_size));
  }
  BufferLayout out;
  out.set_width(image.width());
  out.set_height(image.height());
  out.set_format(f.fourcc);
  out.set_layer_count(layers);
  out.set_layer_stride(layer_stride.value());
  out.set_size(total.value());
  for (int i = 0; i < f.num_planes; ++i) {
    *out.add_planes() = MakePlane(f.planes[i], image, offsets[i].value(),
                                  strides[i].value(), sizes[i].value());
  }
  return out;
}

}  // namespace

absl::StatusOr<BufferLayout> Compute(const ImageDescriptor& image,
                                     uint64_t usage) {
  return Compute(image, usage, Options());
}

absl::StatusOr<BufferLayout> Compute(const ImageDescriptor& image,
                                     uint64_t usage, const Options& options) {
  RETURN_IF_ERROR(usage::Validate(usage));
  ASSIGN_OR_RETURN(const FormatInfo* f, LookupFormat(image.format()));
  ASSIGN_OR_RETURN(Alignment mod, ModifierAlignment(image.modifier(), options));
  RETURN_IF_ERROR(CheckDimensions(image, options.limits));
  Alignment by_usage = AlignmentFor(usage);
  RETURN_IF_ERROR(CheckUsage(*f, image, usage, by_usage, mod));
  Align64 all = Merge(by_usage, mod);
  Align64 in_layer = all;
  if (f->android_yv12) {  // the Android formula must hold inside a layer
    in_layer = Merge(Alignment{by_usage.stride, 1, 1}, mod);
  }
  ASSIGN_OR_RETURN(BufferLayout out, Assemble(*f, image, in_layer, all.plane,
                                              AtLeastOne(mod.height), options.limits));
  out.set_modifier(image.modifier() == DRM_FORMAT_MOD_INVALID
                       ? DRM_FORMAT_MOD_LINEAR
                       : image.modifier());
  return out;
}

absl::StatusOr<BufferLayout> ComputeBlob(uint64_t size, uint64_t usage,
                                         const Limits& limits) {
  RETURN_IF_ERROR(usage::Validate(usage));
  if (size == 0 || size > limits.max_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "blob size %u must be between 1 and %u bytes", size, limits.max_size));
  }
  BufferLayout out;
  out.set_format(format::kBlob);
  out.set_size(size);
  return out;
}

std::string ModifierName(uint64_t modifier) {
  if (modifier == DRM_FORMAT_MOD_LINEAR) return "LINEAR";
  if (modifier == DRM_FORMAT_MOD_INVALID) return "INVALID";
  std::string hex = absl::StrFormat("0x%016x", modifier);
  char* vendor = drmGetFormatModifierVendor(modifier);
  char* name = drmGetFormatModifierName(modifier);
  std::string out = hex;
  if (name != nullptr) {
    out = absl::StrCat(vendor != nullptr ? vendor : "", vendor ? "_" : "",
                       name, " (", hex, ")");
  }
  free(vendor);
  free(name);
  return out;
}

}  // namespace halloc::layout
