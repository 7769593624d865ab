// What hallocctl prints: for people (aligned text) and for scripts (--json:
// protobuf's JSON mapping, one object per line, field names as in
// allocator.proto, zero values included, 64-bit integers as strings).
#ifndef HALLOC_CLIENTS_CLI_OUTPUT_H_
#define HALLOC_CLIENTS_CLI_OUTPUT_H_

#include <ostream>
#include <string>

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "halloc/v1/allocator.pb.h"

namespace halloc::cli {

// One line of JSON, newline included.
std::string Json(const google::protobuf::Message& message);

// "buffer ID  NAME  SIZE bytes ..." and its holders; with `detail` also
// the layout and the metadata (in set-metadata's syntax).
void PrintBuffer(std::ostream& out, const v1::BufferInfo& b, bool detail);
void PrintStats(std::ostream& out, const v1::StatsResponse& s);
void PrintDump(std::ostream& out, const v1::DumpResponse& d);
// "grant ID buffer ID to uid U, cpu read: token T" (the token last).
void PrintGrant(std::ostream& out, const v1::Grant& g);
// The format table (`supported` without a descriptor).
void PrintFormats(std::ostream& out, bool json);
void PrintSupported(std::ostream& out, const v1::IsSupportedResponse& r);

// "none", "read", "read-write"; "-" for UNSPECIFIED or unknown values.
absl::string_view AccessName(v1::CpuAccess access);
// "premultiplied" for BLEND_MODE_PREMULTIPLIED; "unset" for INVALID.
std::string BlendModeName(v1::BlendMode mode);

}  // namespace halloc::cli

#endif  // HALLOC_CLIENTS_CLI_OUTPUT_H_
