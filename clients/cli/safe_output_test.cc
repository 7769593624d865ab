#include "clients/cli/safe_output.h"

#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace halloc::cli {
namespace {

TEST(TerminalSafeTest, EscapesControlsAndKeepsText) {
  EXPECT_EQ(TerminalSafe("buffer 7 frame\tok\n"), "buffer 7 frame\tok\n");
  EXPECT_EQ(TerminalSafe("caf\xc3\xa9 \xe2\x9c\x93"), "caf\xc3\xa9 \xe2\x9c\x93");  // é ✓
  // A title, a cleared screen, a carriage return to forge a line.
  EXPECT_EQ(TerminalSafe("\x1b]0;owned\x07\x1b[2J\rok"),
            "\\x1b]0;owned\\x07\\x1b[2J\\x0dok");
  EXPECT_EQ(TerminalSafe(std::string("a\0b\x7f", 4)), "a\\x00b\\x7f");
  // C1 CSI (U+009B) and a right-to-left override (U+202E), an isolate.
  EXPECT_EQ(TerminalSafe("x\xc2\x9b" "2Jy"), "x\\xc2\\x9b2Jy");
  EXPECT_EQ(TerminalSafe("\xe2\x80\xaetxt.exe"), "\\xe2\\x80\\xaetxt.exe");
  EXPECT_EQ(TerminalSafe("\xe2\x81\xa6"), "\\xe2\\x81\\xa6");
  // Bytes that do not make a character pass as they are, one by one.
  EXPECT_EQ(TerminalSafe("\xc2" "A\xff"), "\xc2" "A\xff");
}

TEST(SafeOutputTest, FiltersAStreamEvenAcrossWritesAndRestoresIt) {
  std::ostringstream out;
  {
    SafeOutput safe(out);
    out << "name: " << "\xc2";  // a C1 control cut between two writes
    out << "\x9b" "2J" << '\x1b' << "end" << std::endl;
    EXPECT_EQ(out.str(), "name: \\xc2\\x9b2J\\x1bend\n");
    out << "\xe2\x80";  // unfinished when the guard goes: written as is
  }
  EXPECT_EQ(out.str(), "name: \\xc2\\x9b2J\\x1bend\n\xe2\x80");
  out << "\x1b";
  EXPECT_EQ(out.str().back(), '\x1b') << "the stream is its own again";
}

}  // namespace
}  // namespace halloc::cli
