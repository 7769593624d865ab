// Describe(): the human-readable form of a BufferLayout (see layout.h).
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/layout/format.h"
#include "service/layout/layout.h"

namespace halloc::layout {
namespace {

std::string Components(const v1::PlaneLayout& plane) {
  std::vector<std::string> parts;
  for (const v1::PlaneComponent& c : plane.components()) {
    // Escaped: a layout may come from any daemon (hallocctl prints it).
    parts.push_back(
        absl::StrFormat("%s[%u:%u]", absl::CHexEscape(c.type()), c.offset_bits(), c.size_bits()));
  }
  return absl::StrJoin(parts, " ");
}

std::string PlaneLine(int index, const v1::PlaneLayout& p) {
  return absl::StrFormat(
      "  plane %d: offset %u, stride %u, size %u; %ux%u samples, "
      "subsampling %ux%u, %u bits/sample: %s\n",
      index, p.offset(), p.stride(), p.size(), p.width_in_samples(),
      p.height_in_samples(), p.horizontal_subsampling(),
      p.vertical_subsampling(), p.sample_increment_bits(), Components(p));
}

}  // namespace

std::string Describe(const v1::BufferLayout& layout) {
  if (layout.planes_size() == 0) {
    return absl::StrFormat("%s, size %u bytes\n",
                           format::Name(layout.format()), layout.size());
  }
  std::string out = absl::StrFormat(
      "%s (0x%08x) %ux%u, %u layer%s, modifier %s\n"
      "  size %u bytes, layer stride %u, %d plane%s\n",
      format::Name(layout.format()), layout.format(), layout.width(),
      layout.height(), layout.layer_count(),
      layout.layer_count() == 1 ? "" : "s", ModifierName(layout.modifier()),
      layout.size(), layout.layer_stride(), layout.planes_size(),
      layout.planes_size() == 1 ? "" : "s");
  for (int i = 0; i < layout.planes_size(); ++i) {
    absl::StrAppend(&out, PlaneLine(i, layout.planes(i)));
  }
  return out;
}

}  // namespace halloc::layout
