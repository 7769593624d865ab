// Randomized descriptors (fixed seed) through Compute: no crash, only
// INVALID_ARGUMENT refusals, and every accepted layout is sane.
#include <drm_fourcc.h>

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "clients/cpp/halloc/base/usage.h"
#include "gtest/gtest.h"
#include "service/layout/format.h"
#include "service/layout/layout.h"

namespace halloc::layout {
namespace {

using u128 = unsigned __int128;

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}

  uint32_t Dimension() {
    switch (rng_() % 8) {
      case 0: return 0;
      case 1: return static_cast<uint32_t>(rng_());  // anything
      case 2: return UINT32_MAX - rng_() % 4;
      case 3: return 16384 - 2 + rng_() % 5;         // around the limit
      case 4: return 1 + rng_() % 8192;
      default: return 1 + rng_() % 300;
    }
  }
  uint32_t Layers() {
    switch (rng_() % 6) {
      case 0: return 0;
      case 1: return static_cast<uint32_t>(rng_());
      case 2: return 2047 + rng_() % 3;
      default: return 1 + rng_() % 4;
    }
  }
  uint32_t Format() {
    auto all = format::All();
    switch (rng_() % 10) {
      case 0: return static_cast<uint32_t>(rng_());
      case 1: return DRM_FORMAT_XRGB4444;  // known to drm, not to halloc
      case 2: return format::kBlob;
      default: return all[rng_() % all.size()].fourcc;
    }
  }
  uint64_t Modifier() {
    switch (rng_() % 10) {
      case 0: return rng_();
      case 1: return DRM_FORMAT_MOD_INVALID;
      case 2: return I915_FORMAT_MOD_Y_TILED;
      default: return DRM_FORMAT_MOD_LINEAR;
    }
  }
  uint64_t Usage() {
    if (rng_() % 8 == 0) return rng_();  // likely reserved bits
    uint64_t u = rng_() & ~usage::kReservedMask &
                 ~(usage::kCpuReadMask | usage::kCpuWriteMask);
    // A cube map or a mip chain now and then (refused unless whole faces;
    // always): half the descriptors would otherwise ask for one.
    if (rng_() % 8 != 0) u &= ~(usage::kGpuCubeMap | usage::kGpuMipmapComplete);
    const uint64_t cpu[] = {0, 2, 3};
    return u | cpu[rng_() % 3] | (cpu[rng_() % 3] << 4);
  }
  bool Coin() { return rng_() % 2 == 0; }

 private:
  std::mt19937_64 rng_;
};

std::string Show(const v1::ImageDescriptor& d, uint64_t usage) {
  return d.ShortDebugString() + " usage=" + usage::ToString(usage);
}

// Everything an accepted layout must satisfy.
void CheckLayout(const v1::ImageDescriptor& d, uint64_t usage,
                 const Limits& limits, const v1::BufferLayout& l) {
  const format::FormatInfo* f = format::Find(d.format());
  ASSERT_NE(f, nullptr);
  ASSERT_TRUE(usage::Validate(usage).ok());
  ASSERT_TRUE(d.modifier() == DRM_FORMAT_MOD_LINEAR ||
              d.modifier() == DRM_FORMAT_MOD_INVALID);
  EXPECT_EQ(l.modifier(), DRM_FORMAT_MOD_LINEAR);
  ASSERT_GE(d.width(), 1u);
  ASSERT_GE(d.height(), 1u);
  ASSERT_LE(d.width(), limits.max_dimension);
  ASSERT_LE(d.height(), limits.max_dimension);
  uint32_t layers = std::max(d.layer_count(), 1u);
  ASSERT_LE(layers, limits.max_layers);
  EXPECT_EQ(l.layer_count(), layers);
  EXPECT_EQ(u128{l.size()}, u128{l.layer_stride()} * layers);
  EXPECT_LE(l.size(), limits.max_size);
  ASSERT_EQ(l.planes_size(), f->num_planes);
  Alignment align = AlignmentFor(usage);
  u128 previous_end = 0;
  for (int i = 0; i < l.planes_size(); ++i) {
    const v1::PlaneLayout& p = l.planes(i);
    const format::PlaneInfo& info = f->planes[i];
    SCOPED_TRACE(i);
    // Planes in order, not overlapping, inside one layer.
    EXPECT_GE(u128{p.offset()}, previous_end);
    previous_end = u128{p.offset()} + p.size();
    EXPECT_LE(previous_end, u128{l.layer_stride()});
    // Rows fit their samples; the plane holds all its rows.
    EXPECT_EQ(p.width_in_samples(), (u128{d.width()} + info.h_sub - 1) / info.h_sub);
    EXPECT_EQ(p.height_in_samples(), (u128{d.height()} + info.v_sub - 1) / info.v_sub);
    u128 min_row = (u128{p.width_in_samples()} + info.block_width - 1) /
                   info.block_width * info.block_bytes;
    EXPECT_GE(u128{p.stride()}, min_row);
    EXPECT_GE(u128{p.size()}, u128{p.stride()} * p.height_in_samples());
    // And the rows the usage promises its devices: the height aligned to
    // the usage's rows, this plane's share of them.
    const u128 rows = (u128{d.height()} + align.height - 1) / align.height * align.height;
    EXPECT_GE(u128{p.size()}, u128{p.stride()} * ((rows + info.v_sub - 1) / info.v_sub));
    if (i == 0) EXPECT_EQ(p.stride() % info.block_bytes, 0u) << "a fraction of a pixel";
    EXPECT_EQ(p.stride() % align.stride, 0u);
    if (!f->android_yv12) {
      EXPECT_EQ(p.offset() % align.plane, 0u);
    }
  }
  EXPECT_EQ(l.layer_stride() % align.plane, 0u);
  if (f->android_yv12) {  // Android's formula: even sizes, no padded rows
    EXPECT_EQ(d.width() % 2, 0u);
    EXPECT_EQ(d.height() % 2, 0u);
    EXPECT_EQ(align.height, 1u);
  }
  if (usage & usage::kGpuCubeMap) EXPECT_EQ(layers % 6, 0u);
  EXPECT_EQ(usage & usage::kGpuMipmapComplete, 0u) << "no mip chain is laid out";
}

// Returns true if the descriptor was accepted.
bool RunOne(Gen& gen, int i) {
  v1::ImageDescriptor d;
  d.set_width(gen.Dimension());
  d.set_height(gen.Dimension());
  d.set_format(gen.Format());
  d.set_modifier(gen.Modifier());
  d.set_layer_count(gen.Layers());
  uint64_t usage = gen.Usage();
  Options opts;
  if (gen.Coin()) opts.limits = {UINT32_MAX, UINT32_MAX, UINT64_MAX};
  SCOPED_TRACE(std::to_string(i) + ": " + Show(d, usage));
  absl::StatusOr<v1::BufferLayout> l = Compute(d, usage, opts);
  // Same answer twice (IsSupported and Allocate share this call).
  absl::StatusOr<v1::BufferLayout> again = Compute(d, usage, opts);
  EXPECT_EQ(l.ok(), again.ok());
  if (l.ok() != again.ok()) return false;
  if (!l.ok()) {
    EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument)
        << l.status();
    EXPECT_EQ(l.status(), again.status());
    return false;
  }
  EXPECT_EQ(l->SerializeAsString(), again->SerializeAsString());
  CheckLayout(d, usage, opts.limits, *l);
  return true;
}

TEST(LayoutFuzz, RandomDescriptors) {
  Gen gen(20261125);
  int accepted = 0;
  constexpr int kRuns = 40000;
  for (int i = 0; i < kRuns; ++i) {
    accepted += RunOne(gen, i) ? 1 : 0;
    if (HasFailure()) return;
  }
  // The generator must reach both sides; most of the space is invalid.
  EXPECT_GT(accepted, kRuns / 20);
  EXPECT_LT(accepted, kRuns / 2);
  std::printf("accepted %d of %d\n", accepted, kRuns);
}

// A small, well-formed space where every descriptor must be accepted under
// default limits (so the fuzz above cannot pass by refusing everything).
TEST(LayoutFuzz, SmallValidDescriptorsAreAlwaysAccepted) {
  Gen gen(7);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    v1::ImageDescriptor d;
    auto all = format::All();
    d.set_format(all[rng() % all.size()].fourcc);
    d.set_width(1 + rng() % 4096);
    d.set_height(1 + rng() % 2160);
    d.set_layer_count(rng() % 3);
    uint64_t usage = gen.Usage() & ~(usage::kGpuCubeMap | usage::kGpuMipmapComplete);
    if (!usage::Validate(usage).ok()) continue;
    if (d.format() == DRM_FORMAT_YVU420) {  // Android's YV12: even, unpadded rows
      d.set_width((d.width() + 1) & ~1u);
      d.set_height((d.height() + 1) & ~1u);
      usage &= ~(usage::kVideoDecoder | usage::kVideoEncoder | usage::kHwImageEncoder);
    }
    SCOPED_TRACE(Show(d, usage));
    absl::StatusOr<v1::BufferLayout> l = Compute(d, usage);
    ASSERT_TRUE(l.ok()) << l.status();
    CheckLayout(d, usage, Limits(), *l);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace halloc::layout
