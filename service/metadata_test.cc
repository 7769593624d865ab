#include "service/metadata.h"

#include <drm_fourcc.h>

#include "gtest/gtest.h"
#include "service/layout/layout.h"

namespace halloc {
namespace {

v1::BufferLayout Nv12(uint32_t w, uint32_t h) {
  v1::ImageDescriptor image;
  image.set_width(w);
  image.set_height(h);
  image.set_format(DRM_FORMAT_NV12);
  return *layout::Compute(image, 0);
}

v1::Rect Rect(int l, int t, int r, int b) {
  v1::Rect x;
  x.set_left(l);
  x.set_top(t);
  x.set_right(r);
  x.set_bottom(b);
  return x;
}

TEST(MetadataTest, DefaultCropIsEveryPlaneWhole) {
  const v1::BufferMetadata m = DefaultMetadata(Nv12(64, 32));
  ASSERT_EQ(m.crop_size(), 2);
  EXPECT_EQ(m.crop(0).right(), 64);
  EXPECT_EQ(m.crop(0).bottom(), 32);
  EXPECT_EQ(m.crop(1).right(), 32);  // CbCr: half width, half height in samples
  EXPECT_EQ(m.crop(1).bottom(), 16);
  EXPECT_EQ(m.dataspace(), 0);
  EXPECT_EQ(DefaultMetadata(std::nullopt).crop_size(), 0);
}

TEST(MetadataTest, MutableFieldsAreSetAndCheckedAndBadValuesChangeNothing) {
  const std::optional<v1::BufferLayout> layout = Nv12(64, 32);
  v1::BufferMetadata m = DefaultMetadata(layout);
  const v1::BufferMetadata before = m;
  v1::BufferMetadata value;
  value.set_dataspace(-1);
  EXPECT_EQ(SetMetadataField(v1::METADATA_DATASPACE, value, layout, &m).code(),
            absl::StatusCode::kInvalidArgument);
  value.set_blend_mode(static_cast<v1::BlendMode>(99));
  EXPECT_EQ(SetMetadataField(v1::METADATA_BLEND_MODE, value, layout, &m).code(),
            absl::StatusCode::kInvalidArgument);
  // A type no version of the API has is told so (not "metadata  (999) is
  // immutable", its name empty).
  const absl::Status unknown =
      SetMetadataField(static_cast<v1::StandardMetadataType>(999), value, layout, &m);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.message(), "unknown metadata type 999");
  *value.add_crop() = Rect(0, 0, 65, 32);  // wider than plane 0
  *value.add_crop() = Rect(0, 0, 32, 16);
  EXPECT_EQ(SetMetadataField(v1::METADATA_CROP, value, layout, &m).code(),
            absl::StatusCode::kInvalidArgument);
  value.clear_crop();
  *value.add_crop() = Rect(8, 8, 8, 16);  // empty
  *value.add_crop() = Rect(0, 0, 32, 16);
  EXPECT_EQ(SetMetadataField(v1::METADATA_CROP, value, layout, &m).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetMetadataField(v1::METADATA_CROP, value, std::nullopt, &m).code(),
            absl::StatusCode::kInvalidArgument);  // a blob has no crop
  EXPECT_EQ(m.SerializeAsString(), before.SerializeAsString());

  value.set_dataspace(143261696);
  ASSERT_TRUE(SetMetadataField(v1::METADATA_DATASPACE, value, layout, &m).ok());
  EXPECT_EQ(m.dataspace(), 143261696);
  value.set_blend_mode(v1::BLEND_MODE_PREMULTIPLIED);
  ASSERT_TRUE(SetMetadataField(v1::METADATA_BLEND_MODE, value, layout, &m).ok());
  EXPECT_EQ(m.blend_mode(), v1::BLEND_MODE_PREMULTIPLIED);
  value.clear_crop();
  *value.add_crop() = Rect(2, 2, 62, 30);
  *value.add_crop() = Rect(1, 1, 31, 15);
  ASSERT_TRUE(SetMetadataField(v1::METADATA_CROP, value, layout, &m).ok());
  EXPECT_EQ(m.crop(0).left(), 2);
  EXPECT_EQ(m.crop(1).bottom(), 15);
}

// A client may pad each rectangle with unknown fields (protobuf keeps them,
// each 2-byte one an object of its own): hallocd keeps the four numbers
// alone, or ~60 KB per buffer would be stored, uncharged, and sent back
// with every Describe, List and Import.
TEST(MetadataTest, ACropKeepsItsNumbersAndNothingElse) {
  const std::optional<v1::BufferLayout> layout = Nv12(64, 32);
  v1::BufferMetadata m = DefaultMetadata(layout);
  v1::BufferMetadata value;
  *value.add_crop() = Rect(2, 2, 62, 30);
  *value.add_crop() = Rect(1, 1, 31, 15);
  const size_t plain = value.crop(0).ByteSizeLong();
  for (int i = 0; i < 1000; ++i) {
    value.mutable_crop(0)
        ->GetReflection()
        ->MutableUnknownFields(value.mutable_crop(0))
        ->AddVarint(5, 0);
  }
  ASSERT_GT(value.crop(0).ByteSizeLong(), plain + 1000);
  ASSERT_TRUE(SetMetadataField(v1::METADATA_CROP, value, layout, &m).ok());
  EXPECT_EQ(m.crop(0).ByteSizeLong(), plain);
  EXPECT_TRUE(m.crop(0).GetReflection()->GetUnknownFields(m.crop(0)).empty());
  EXPECT_EQ(m.crop(0).right(), 62);
  EXPECT_EQ(m.crop(1).left(), 1);
}

TEST(MetadataTest, OtherTypesAreImmutable) {
  v1::BufferMetadata m;
  const absl::Status s = SetMetadataField(static_cast<v1::StandardMetadataType>(1),
                                          v1::BufferMetadata(), std::nullopt, &m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("immutable"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace halloc
