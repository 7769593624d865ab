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
  // Bytes that are not part of a whole character are escaped one by one:
  // a lead cut short, a stray continuation, an invalid byte, a raw 8-bit
  // C1 control (CSI).
  EXPECT_EQ(TerminalSafe("\xc2"
                         "A\xff\x80\x9b"
                         "2J"),
            "\\xc2A\\xff\\x80\\x9b2J");
  EXPECT_EQ(TerminalSafe("\xe2\x80"), "\\xe2\\x80");
}

TEST(JsonTerminalSafeTest, WritesWhatATerminalWouldObeyAsJsonEscapes) {
  EXPECT_EQ(JsonTerminalSafe(R"({"exe":"/tmp/a\u001b","n":"cafÃ©"})"),
            R"({"exe":"/tmp/a\u001b","n":"cafÃ©"})");
  EXPECT_EQ(JsonTerminalSafe("{\"exe\":\"\xe2\x81\xa6x\xc2\x9b\x7f\"}"),
            R"({"exe":"\u2066x\u009b\u007f"})");
  // And through SafeOutput it passes unchanged.
  EXPECT_EQ(TerminalSafe(JsonTerminalSafe("{\"a\":\"\xe2\x80\xae\"}")), R"({"a":"\u202e"})");
}

TEST(SafeOutputTest, FiltersAStreamEvenAcrossWritesAndRestoresIt) {
  std::ostringstream out;
  {
    SafeOutput safe(out);
    out << "name: " << "\xc2";  // a C1 control cut between two writes
    out << "\x9b" "2J" << '\x1b' << "end" << std::endl;
    EXPECT_EQ(out.str(), "name: \\xc2\\x9b2J\\x1bend\n");
    // Cut by a flush (std::cerr flushes after every <<): escaped then, and
    // what would have completed it on its own.
    out << "\xe2" << std::flush << "\x80\xae"
        << "ok\n";
    EXPECT_EQ(out.str(), "name: \\xc2\\x9b2J\\x1bend\n\\xe2\\x80\\xaeok\n");
    out << "\xe2\x80";  // unfinished when the guard goes: escaped
  }
  EXPECT_EQ(out.str(), "name: \\xc2\\x9b2J\\x1bend\n\\xe2\\x80\\xaeok\n\\xe2\\x80");
  out << "\x1b";
  EXPECT_EQ(out.str().back(), '\x1b') << "the stream is its own again";
}

}  // namespace
}  // namespace halloc::cli
