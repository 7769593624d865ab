// gRPC's lines, which may carry a client's header values whole: a few a
// second, escaped, cut; an assertion's line always.
#include "service/util/grpc_log.h"

#include <grpc/support/log.h>

#include <string>

#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "service/util/log_lines_testing.h"

namespace halloc {
namespace {

// As gRPC 1.51's HPACK parser logs a bad grpc-timeout: the value whole.
void LogHeaderValue(const std::string& value) {
  gpr_log(GPR_ERROR, "Error parsing metadata: error=invalid value key=grpc-timeout value=%s",
          value.c_str());
}

TEST(LimitGrpcLogsTest, AFloodOfClientValuesLogsAFewEscapedLines) {
  LimitGrpcLogs();
  absl::SleepFor(absl::Seconds(1.1));  // a window of its own
  LogLines lines("gRPC ");
  // A forged glog line after a newline, a terminal escape, and a value as
  // long as a header block may be.
  const std::string forged = "1S\nI1207 00:00:00.000000     1 audit.cc:40] AUDIT forged\x1b[31m";
  const std::string huge(60000, 'A');
  LogHeaderValue(forged);
  for (int i = 0; i < 199; ++i) LogHeaderValue(huge);
  const std::vector<std::string> got = lines.lines();
  ASSERT_GE(got.size(), 1u);
  // 5 a second: more only if the loop took more than a second or two.
  EXPECT_LE(got.size(), 15u);
  for (const std::string& line : got) {
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
    EXPECT_LE(line.size(), 1024u) << line.substr(0, 200);
  }
  EXPECT_EQ(lines.Count("value=1S\\nI1207"), 1) << got[0];
  EXPECT_EQ(lines.Count("...("), static_cast<int>(got.size()) - 1);
}

TEST(LimitGrpcLogsTest, AnAssertionsLineIsNeverDropped) {
  LimitGrpcLogs();
  LogLines lines("gRPC ");
  for (int i = 0; i < 50; ++i) LogHeaderValue("x");
  // What GPR_ASSERT logs before it aborts.
  gpr_log(GPR_ERROR, "assertion failed: %s", "the last words");
  EXPECT_EQ(lines.Count("assertion failed: the last words"), 1);
  EXPECT_LT(lines.Count("grpc-timeout"), 50);
}

}  // namespace
}  // namespace halloc
