#include "clients/cli/output.h"

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace halloc::cli {
namespace {

// What a client controls is printed escaped: an executable whose name
// holds a newline and a forged row stays on its own session's line.
TEST(OutputTest, DumpEscapesTheExecutablesPath) {
  v1::DumpResponse dump;
  v1::SessionUsage* s = dump.add_sessions();
  s->set_session_id(7);
  s->set_pid(1234);
  s->set_uid(1000);
  s->set_exe("/tmp/x\n1        1       0      admin           0 / 0K  /usr/bin/weston\x1b[2J");
  std::ostringstream out;
  PrintDump(out, dump);
  const std::vector<std::string> lines =
      absl::StrSplit(out.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << out.str();  // the header and one session
  EXPECT_TRUE(absl::StrContains(lines[1], "/tmp/x\\n1")) << lines[1];
  EXPECT_FALSE(absl::StrContains(out.str(), "\x1b")) << "a terminal escape went through";
}

// What the daemon names is printed on one line: a fake daemon's buffer
// name, grant peer or refusal reason holding a newline forged lines ("ok"
// in `hallocctl session`, a row of its own).
TEST(OutputTest, WhatTheDaemonNamesStaysOnItsLine) {
  v1::BufferInfo b;
  b.set_id(3);
  b.set_name("frame\nok");
  b.set_backend("memfd\tx");
  std::ostringstream out;
  PrintBuffer(out, b, false);
  v1::Grant g;
  g.mutable_peer()->set_name("peer\nok");
  g.set_token("t\nok");
  PrintGrant(out, g);
  v1::IsSupportedResponse r;
  r.set_reason("no\nok");
  PrintSupported(out, r);
  const std::vector<std::string> lines = absl::StrSplit(out.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << out.str();
  for (const std::string& line : lines) EXPECT_NE(line, "ok");
  EXPECT_TRUE(absl::StrContains(lines[0], "frame\\nok")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "memfd\\tx")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[1], "peer\\nok")) << lines[1];
  EXPECT_TRUE(absl::StrContains(lines[2], "no\\nok")) << lines[2];
  // And a plane's component, in the layout a detailed listing describes.
  v1::PlaneLayout* plane = b.mutable_layout()->add_planes();
  plane->set_stride(256);
  plane->set_size(4096);
  plane->add_components()->set_type("Y\nok");
  std::ostringstream detail;
  PrintBuffer(detail, b, true);
  for (absl::string_view line : absl::StrSplit(detail.str(), '\n')) EXPECT_NE(line, "ok");
  EXPECT_TRUE(absl::StrContains(detail.str(), "Y\\nok")) << detail.str();
}

// A user's Stats lack other users' rows and the denials: the text says so,
// rather than reading as "no denials".
TEST(OutputTest, StatsSayWhenTheyAreOneUsersView) {
  v1::StatsResponse s;
  std::ostringstream all;
  PrintStats(all, s);
  EXPECT_FALSE(absl::StrContains(all.str(), "for root")) << all.str();
  s.set_only_callers_uid(true);
  std::ostringstream mine;
  PrintStats(mine, s);
  EXPECT_TRUE(absl::StrContains(mine.str(), "the denials are for root")) << mine.str();
}

// The control socket's guards show only once they acted: a count there is
// a client holding hallocd's threads.
TEST(OutputTest, StatsShowTheControlGuardsOnceTheyActed) {
  v1::StatsResponse s;
  std::ostringstream quiet;
  PrintStats(quiet, s);
  EXPECT_FALSE(absl::StrContains(quiet.str(), "control guards")) << quiet.str();
  EXPECT_FALSE(absl::StrContains(quiet.str(), "connect rate")) << quiet.str();
  s.set_grpc_replies_cancelled_total(12);
  s.set_grpc_connections_cut_total(1);
  s.set_connections_rate_limited_total(7);
  std::ostringstream acted;
  PrintStats(acted, s);
  EXPECT_TRUE(absl::StrContains(acted.str(), "12 replies cancelled, 1 connections cut"))
      << acted.str();
  EXPECT_TRUE(absl::StrContains(acted.str(), "connect rate  7 connections refused")) << acted.str();
}

// hallocd's buffer limit says how much of it read-only views take, once
// there are any.
TEST(OutputTest, StatsSayWhatReadViewsTakeOfTheBufferLimit) {
  v1::StatsResponse s;
  s.set_max_buffers(5000);
  std::ostringstream none;
  PrintStats(none, s);
  EXPECT_TRUE(absl::StrContains(none.str(), "buffer limit  5000 (hallocd's, all clients)\n"))
      << none.str();
  s.set_read_views(12);
  std::ostringstream some;
  PrintStats(some, s);
  EXPECT_TRUE(absl::StrContains(some.str(),
                                "5000 (hallocd's, all clients; 12 read-only views "
                                "count in it)\n"))
      << some.str();
}

}  // namespace
}  // namespace halloc::cli
