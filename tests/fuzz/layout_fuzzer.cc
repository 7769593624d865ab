// Descriptor → layout (service/layout: layout.h Compute/ComputeBlob,
// format.h, usage.h) and the daemon's own descriptor check,
// Allocator::IsSupported (the code Allocate runs: name, count, usage, size,
// layout, backend), on the memfd backend.
//
// Input: [sel] [modifier rule: 8 + 3*2 bytes, only if sel bit 2] then a
// serialized halloc.v1.BufferDescriptor.
//   sel bits 0-1: limits: 0 Compute(image, usage); 1 default Options;
//                 2 no limits (UINT32_MAX, UINT32_MAX, UINT64_MAX);
//                 3 small (64 px, 4 layers, 64 KiB)
//   sel bit 2:    Options.modifiers = { X_TILED (512, 8, 4096), the rule
//                 from the input (modifier, stride, height, plane) }
//   sel bits 3-4: IsSupported count: 0, 1, 64, 65
//
// Invariants: refusals are INVALID_ARGUMENT (IsSupported: also
// FAILED_PRECONDITION for PROTECTED on memfd) and never INTERNAL; answers
// are deterministic; an accepted layout has every plane inside its layer, in
// order, rows that fit the samples, strides and offsets on the usage's and
// modifier's alignment, size = layer_stride * layers within the limits;
// looser limits never change an accepted layout; IsSupported agrees with
// Compute; format names, usage strings round-trip.
#include <drm_fourcc.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/halloc/base/usage.h"
#include "halloc/v1/allocator.pb.h"
#include "halloc/v1/types.pb.h"
#include "service/allocator.h"
#include "service/backend/memfd_backend.h"
#include "service/layout/alignment.h"
#include "service/layout/format.h"
#include "service/layout/layout.h"
#include "tests/fuzz/check.h"

namespace halloc {
namespace {

using u128 = unsigned __int128;
using layout::Alignment;
using layout::Limits;
using layout::ModifierRule;
using layout::Options;

uint64_t Lcm(uint64_t a, uint64_t b) {
  a = a == 0 ? 1 : a;
  b = b == 0 ? 1 : b;
  return a / std::gcd(a, b) * b;
}

std::string Show(const v1::ImageDescriptor& d, uint64_t usage) {
  return absl::StrCat(d.ShortDebugString(), " usage=0x", absl::Hex(usage));
}

// Everything an accepted layout must satisfy (cf. layout_fuzz_test.cc, with
// modifier rules and any limits).
void CheckLayout(const v1::ImageDescriptor& d, uint64_t usage,
                 const Options& opts, const v1::BufferLayout& l) {
  const std::string what = Show(d, usage) + " -> " + l.ShortDebugString();
  const format::FormatInfo* f = format::Find(d.format());
  FUZZ_CHECK(f != nullptr, what);
  FUZZ_CHECK(usage::Validate(usage).ok(), what);
  Alignment mod;
  if (d.modifier() != DRM_FORMAT_MOD_LINEAR && d.modifier() != DRM_FORMAT_MOD_INVALID) {
    auto rule = std::find_if(opts.modifiers.begin(), opts.modifiers.end(),
                             [&](const ModifierRule& r) { return r.modifier == d.modifier(); });
    FUZZ_CHECK(rule != opts.modifiers.end(), "undeclared modifier accepted: " + what);
    mod = rule->alignment;
  }
  FUZZ_CHECK(l.modifier() == (d.modifier() == DRM_FORMAT_MOD_INVALID
                                  ? DRM_FORMAT_MOD_LINEAR : d.modifier()), what);
  FUZZ_CHECK(l.format() == d.format() && l.width() == d.width() &&
             l.height() == d.height(), what);
  FUZZ_CHECK(d.width() >= 1 && d.height() >= 1, what);
  FUZZ_CHECK(d.width() <= opts.limits.max_dimension &&
             d.height() <= opts.limits.max_dimension, what);
  const uint32_t layers = std::max(d.layer_count(), 1u);
  FUZZ_CHECK(layers <= opts.limits.max_layers, what);
  FUZZ_CHECK(l.layer_count() == layers, what);
  FUZZ_CHECK(u128{l.size()} == u128{l.layer_stride()} * layers, what);
  FUZZ_CHECK(l.size() <= opts.limits.max_size, what);
  FUZZ_CHECK(l.planes_size() == f->num_planes, what);
  const Alignment by_usage = layout::AlignmentFor(usage);
  const uint64_t stride_align = Lcm(by_usage.stride, mod.stride);
  const uint64_t plane_align = Lcm(by_usage.plane, mod.plane);
  u128 previous_end = 0;
  for (int i = 0; i < l.planes_size(); ++i) {
    const v1::PlaneLayout& p = l.planes(i);
    const format::PlaneInfo& info = f->planes[i];
    const std::string plane = absl::StrCat("plane ", i, ": ", what);
    FUZZ_CHECK(u128{p.offset()} >= previous_end, "planes overlap: " + plane);
    previous_end = u128{p.offset()} + p.size();
    FUZZ_CHECK(previous_end <= u128{l.layer_stride()}, "plane outside its layer: " + plane);
    FUZZ_CHECK(p.width_in_samples() == (u128{d.width()} + info.h_sub - 1) / info.h_sub, plane);
    FUZZ_CHECK(p.height_in_samples() == (u128{d.height()} + info.v_sub - 1) / info.v_sub, plane);
    FUZZ_CHECK(p.horizontal_subsampling() == info.h_sub &&
               p.vertical_subsampling() == info.v_sub, plane);
    const u128 min_row = (u128{p.width_in_samples()} + info.block_width - 1) /
                         info.block_width * info.block_bytes;
    FUZZ_CHECK(u128{p.stride()} >= min_row, "row does not fit: " + plane);
    FUZZ_CHECK(u128{p.size()} >= u128{p.stride()} * p.height_in_samples(),
               "rows do not fit: " + plane);
    // The rows the usage promises its devices (the height aligned to the
    // usage's rows, this plane's share), and whole tile rows.
    const u128 rows = (u128{d.height()} + by_usage.height - 1) / by_usage.height * by_usage.height;
    FUZZ_CHECK(u128{p.size()} >= u128{p.stride()} * ((rows + info.v_sub - 1) / info.v_sub),
               "the usage's padded rows do not fit: " + plane);
    FUZZ_CHECK(p.stride() == 0 || p.size() / p.stride() % std::max<uint32_t>(mod.height, 1) == 0,
               "not whole tile rows: " + plane);
    if (i == 0) FUZZ_CHECK(p.stride() % info.block_bytes == 0, "a fraction of a pixel: " + plane);
    FUZZ_CHECK(p.stride() % stride_align == 0, "stride alignment: " + plane);
    FUZZ_CHECK(p.stride() % std::max<uint32_t>(info.min_stride_alignment, 1) == 0, plane);
    if (!f->android_yv12) {
      FUZZ_CHECK(p.offset() % plane_align == 0, "plane alignment: " + plane);
    }
    FUZZ_CHECK(p.components_size() == info.num_components, plane);
  }
  FUZZ_CHECK(l.layer_stride() % plane_align == 0, "layer stride alignment: " + what);
  if (f->android_yv12) {  // Android's formula: even sizes, no padded rows
    FUZZ_CHECK(d.width() % 2 == 0 && d.height() % 2 == 0, "odd YV12: " + what);
    FUZZ_CHECK(by_usage.height <= 1 && mod.height <= 1 && mod.stride <= 1 && mod.plane <= 1,
               "YV12 with padded rows or tiles: " + what);
  }
  FUZZ_CHECK(!(usage & usage::kGpuCubeMap) || layers % 6 == 0, "cube map faces: " + what);
  FUZZ_CHECK(!(usage & usage::kGpuMipmapComplete), "a mip chain promised: " + what);
  FUZZ_CHECK(!layout::Describe(l).empty(), what);
}

const Allocator& TheAllocator() {
  // No /dev/udmabuf: the memfd backend then limits attach trivially.
  static const Allocator* core = new Allocator(
      std::make_unique<MemfdBackend>("/nonexistent"), halloc::Limits());
  return *core;
}

bool ValidName(const std::string& n) {
  return n.size() <= 63 && std::all_of(n.begin(), n.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' ||
                  c == '-';
         });
}

void RunOne(const uint8_t* data, size_t size) {
  if (size < 1) return;
  const uint8_t sel = data[0];
  size_t pos = 1;
  std::vector<ModifierRule> rules;
  if (sel & 4) {
    if (size < pos + 14) return;
    ModifierRule r{};
    std::memcpy(&r.modifier, data + pos, 8);
    uint16_t a[3];
    std::memcpy(a, data + pos + 8, 6);
    r.alignment = {a[0], a[1], a[2]};
    pos += 14;
    rules.push_back({I915_FORMAT_MOD_X_TILED, {512, 8, 4096}});
    rules.push_back(r);
  }
  v1::BufferDescriptor desc;
  if (!desc.ParseFromArray(data + pos, static_cast<int>(size - pos))) return;
  const uint64_t usage = desc.usage();

  Options opts;
  opts.modifiers = rules;
  switch (sel & 3) {
    case 2: opts.limits = {UINT32_MAX, UINT32_MAX, UINT64_MAX}; break;
    case 3: opts.limits = {64, 4, 64 << 10}; break;
    default: break;
  }
  Options loose = opts;
  loose.limits = {UINT32_MAX, UINT32_MAX, UINT64_MAX};

  // Names and usage strings round-trip.
  if (usage::Validate(usage).ok()) {
    absl::StatusOr<uint64_t> back = usage::Parse(usage::ToString(usage));
    FUZZ_CHECK(back.ok() && *back == usage, usage::ToString(usage));
  } else {
    FUZZ_CHECK(absl::IsInvalidArgument(usage::Validate(usage)));
  }

  absl::StatusOr<v1::BufferLayout> base;  // what the daemon computes
  if (desc.has_image()) {
    const v1::ImageDescriptor& d = desc.image();
    const std::string what = Show(d, usage);
    {
      absl::StatusOr<uint32_t> back = format::ParseName(format::Name(d.format()));
      FUZZ_CHECK(back.ok() && *back == d.format(), format::Name(d.format()));
    }
    (void)layout::ModifierName(d.modifier());
    const absl::StatusOr<v1::BufferLayout> plain = layout::Compute(d, usage);
    layout::Options as_daemon;  // as the allocator's plan computes it (allocator.cc)
    as_daemon.limits.max_size = halloc::Limits().max_buffer_bytes;
    base = layout::Compute(d, usage, as_daemon);
    absl::StatusOr<v1::BufferLayout> l =
        (sel & 3) == 0 && rules.empty() ? plain : layout::Compute(d, usage, opts);
    absl::StatusOr<v1::BufferLayout> again = layout::Compute(d, usage, opts);
    FUZZ_CHECK(l.ok() == again.ok(), "not deterministic: " + what);
    if (!l.ok()) {
      FUZZ_CHECK(absl::IsInvalidArgument(l.status()),
                 what + ": " + l.status().ToString());
      FUZZ_CHECK(l.status() == again.status(), what);
    } else {
      FUZZ_CHECK(l->SerializeAsString() == again->SerializeAsString(),
                 "not deterministic: " + what);
      CheckLayout(d, usage, opts, *l);
      // Limits only refuse; they never change a layout.
      absl::StatusOr<v1::BufferLayout> unlimited = layout::Compute(d, usage, loose);
      FUZZ_CHECK(unlimited.ok() && unlimited->SerializeAsString() == l->SerializeAsString(),
                 "looser limits changed the layout: " + what);
      // Declaring modifiers never changes a LINEAR layout.
      if (base.ok() && (sel & 3) < 2) {
        FUZZ_CHECK(base->SerializeAsString() == l->SerializeAsString(), what);
      }
    }
    if (base.ok()) CheckLayout(d, usage, Options(), *base);
  } else if (desc.has_size()) {
    const Limits limits = opts.limits;
    absl::StatusOr<v1::BufferLayout> l = layout::ComputeBlob(desc.size(), usage, limits);
    const bool valid = usage::Validate(usage).ok() && desc.size() > 0 &&
                       desc.size() <= limits.max_size;
    FUZZ_CHECK(l.ok() == valid, absl::StrCat("blob ", desc.size(), ": ", l.status().ToString()));
    if (l.ok()) {
      FUZZ_CHECK(l->size() == desc.size() && l->planes_size() == 0 &&
                 l->format() == format::kBlob);
    } else {
      FUZZ_CHECK(absl::IsInvalidArgument(l.status()), l.status().ToString());
    }
  }

  // The daemon's check, as IsSupported and Allocate run it (no session).
  static constexpr uint32_t kCounts[4] = {0, 1, 64, 65};
  v1::IsSupportedRequest req;
  *req.mutable_desc() = desc;
  req.set_count(kCounts[(sel >> 3) & 3]);
  const v1::IsSupportedResponse resp = TheAllocator().IsSupported(req, nullptr);
  const auto code = static_cast<absl::StatusCode>(resp.code());
  const std::string what = desc.ShortDebugString() + " -> " + resp.ShortDebugString();
  if (std::getenv("HALLOC_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "sel %u: %s\n", sel, what.c_str());
  }
  if (resp.supported()) {
    FUZZ_CHECK(resp.code() == 0 && resp.backend() == "memfd", what);
    FUZZ_CHECK(req.count() <= 64 && ValidName(desc.name()), what);
    FUZZ_CHECK(!(usage & usage::kProtected), "PROTECTED on memfd: " + what);
    FUZZ_CHECK(desc.has_image() || (desc.has_size() && desc.size() > 0), what);
    if (desc.has_image()) {
      FUZZ_CHECK(base.ok(), "supported, but Compute refuses: " + what);
      FUZZ_CHECK(resp.layout().SerializeAsString() == base->SerializeAsString(),
                 "IsSupported and Compute disagree: " + what);
    }
  } else {
    FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument ||
               (code == absl::StatusCode::kFailedPrecondition &&
                (usage & usage::kProtected)),
               what);
    FUZZ_CHECK(!resp.reason().empty(), what);
    if (desc.has_image() && base.ok() && req.count() <= 64 &&
        ValidName(desc.name()) && base->size() <= halloc::Limits().max_buffer_bytes) {
      FUZZ_CHECK(code == absl::StatusCode::kFailedPrecondition,
                 "valid image refused: " + what);
    }
  }
}

}  // namespace
}  // namespace halloc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  halloc::RunOne(data, size);
  return 0;
}
