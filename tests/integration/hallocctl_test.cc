// hallocctl against an in-process daemon: output a person can check, JSON
// a script can parse, and exit codes that say what went wrong. Sessions are
// driven line by line, the way a script drives `hallocctl session`.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/testing/test_daemon.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "halloc/v1/allocator.pb.h"

extern char** environ;

namespace halloc {
namespace {

struct Result {
  int code;
  std::string out;  // stdout and stderr
};

std::string HallocctlPath() {
  return absl::StrCat(getenv("TEST_SRCDIR"), "/halloc/clients/cli/hallocctl");
}

// How many times `needle` occurs in `haystack`.
int Count(absl::string_view haystack, absl::string_view needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != absl::string_view::npos;
       at = haystack.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

// The number right after the first `prefix` in `text` ("buffer 7 ..." → 7).
uint64_t NumberAfter(absl::string_view text, absl::string_view prefix) {
  const size_t at = text.find(prefix);
  if (at == absl::string_view::npos) return 0;
  absl::string_view rest = text.substr(at + prefix.size());
  rest = rest.substr(0, rest.find_first_not_of("0123456789"));
  uint64_t n = 0;
  return absl::SimpleAtoi(rest, &n) ? n : 0;
}

// Non-empty lines of `text`.
std::vector<std::string> Lines(absl::string_view text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

template <typename Message>
std::optional<Message> FromJson(const std::string& json) {
  Message m;
  if (!google::protobuf::util::JsonStringToMessage(json, &m).ok()) return std::nullopt;
  return m;
}

// A hallocctl process we write lines to (its stdin) and read lines from (its
// stdout and stderr).
class Proc {
 public:
  Proc(const std::vector<std::string>& args, const ConnectOptions& o) {
    // A hallocctl that died must fail the test, not kill it (EPIPE, not
    // SIGPIPE, on the next write).
    ::signal(SIGPIPE, SIG_IGN);
    std::vector<std::string> argv = {HallocctlPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<std::string> env = {
        absl::StrCat("HALLOC_CONTROL_SOCKET=", o.control_socket),
        absl::StrCat("HALLOC_BROKER_SOCKET=", o.broker_socket)};
    for (char** e = environ; *e != nullptr; ++e) {
      if (!absl::StartsWith(*e, "HALLOC_")) env.push_back(*e);
    }
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0) return;
    UniqueFd in_read(in[0]), in_write(in[1]);
    if (::pipe2(out, O_CLOEXEC) != 0) return;
    UniqueFd out_read(out[0]), out_write(out[1]);
    // The child gets SIGPIPE back at its default (Subprocess resets what
    // this test ignores).
    absl::StatusOr<Subprocess> p = Subprocess::Spawn({.argv = std::move(argv),
                                                      .env = std::move(env),
                                                      .stdin_fd = in_read.get(),
                                                      .stdout_fd = out_write.get(),
                                                      .stderr_fd = out_write.get()});
    if (!p.ok()) return;  // started() says so
    process_ = *std::move(p);
    in_ = std::move(in_write);
    out_ = std::move(out_read);
  }

  bool started() const { return process_.running(); }

  void Send(absl::string_view line) {
    const std::string text = absl::StrCat(line, "\n");
    ASSERT_EQ(::write(in_.get(), text.data(), text.size()),
              static_cast<ssize_t>(text.size()));
  }

  // The next line of output, without its newline; nullopt at EOF or when
  // none comes in time.
  std::optional<std::string> ReadLine(absl::Duration timeout = absl::Seconds(20)) {
    return testing::ReadLine(out_.get(), &buf_, timeout);
  }

  // Reads lines until one contains `text`; all of them, that one included.
  std::string ReadUntil(absl::string_view text) {
    std::string seen;
    while (std::optional<std::string> line = ReadLine()) {
      absl::StrAppend(&seen, *line, "\n");
      if (absl::StrContains(*line, text)) break;
    }
    return seen;
  }

  struct Reply {
    std::string out;     // the command's output
    std::string status;  // "ok" or "error EXIT: message"; "" if none came
  };
  // One session command: its output and the status line that ends it.
  Reply Command(absl::string_view line) {
    Send(line);
    Reply r;
    while (std::optional<std::string> next = ReadLine()) {
      if (*next == "ok" || absl::StartsWith(*next, "error ")) {
        r.status = *next;
        break;
      }
      absl::StrAppend(&r.out, *next, "\n");
    }
    return r;
  }

  void CloseStdin() { in_.reset(); }
  void Signal(int sig) { process_.Signal(sig); }

  // The exit code; -1 if it died of a signal.
  int Wait() {
    const int status = *process_.Wait();
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  UniqueFd in_;
  UniqueFd out_;
  Subprocess process_;  // killed and reaped (if still running) before the pipes close
  std::string buf_;
};

class HallocctlTest : public testing::HallocTest {
 protected:
  Result Run(const std::vector<std::string>& args, bool reachable = true) {
    const ConnectOptions o = daemon().connect_options();
    const std::string cmd = absl::StrCat(
        "HALLOC_CONTROL_SOCKET=", reachable ? o.control_socket : "/nonexistent",
        " HALLOC_BROKER_SOCKET=", reachable ? o.broker_socket : "/nonexistent",
        " ", HallocctlPath(), " ", absl::StrJoin(args, " "), " 2>&1");
    Result r{-1, ""};
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return r;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
  }

  std::unique_ptr<Proc> Start(const std::vector<std::string>& args) {
    auto p = std::make_unique<Proc>(args, daemon().connect_options());
    EXPECT_TRUE(p->started());
    return p;
  }

  // The holders of buffer `id` as hallocd sees them (the test process
  // runs as the daemon's uid, so it may list every buffer).
  int Holders(uint64_t id) {
    absl::StatusOr<std::vector<v1::BufferInfo>> all = client().List(true);
    EXPECT_TRUE(all.ok()) << all.status();
    if (!all.ok()) return -1;
    for (const v1::BufferInfo& b : *all) {
      if (b.id() == id) return b.holders_size();
    }
    return 0;
  }

  // Waits (a session ends when hallocd sees its socket close) until buffer
  // `id` has `n` holders; returns how many it has.
  int AwaitHolders(uint64_t id, int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (Holders(id) != n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    return Holders(id);
  }
};

TEST_F(HallocctlTest, AllocatePrintsTheLayout) {
  Result r = Run({"allocate", "--format", "NV12", "--width", "1920", "--height",
                  "1080", "--usage", "camera_output,composer_overlay"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "plane 1: offset 2073600, stride 1920")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "camera_output")) << r.out;
}

TEST_F(HallocctlTest, RefusalsAndBadCommandLinesHaveTheirExitCodes) {
  Result bad_usage = Run({"allocate", "--size", "4096", "--usage", "no_such_usage"});
  EXPECT_EQ(bad_usage.code, 2) << bad_usage.out;
  Result refused = Run({"allocate", "--size", "99999999999999"});
  EXPECT_EQ(refused.code, 1) << refused.out;
  EXPECT_TRUE(absl::StrContains(refused.out, "INVALID_ARGUMENT")) << refused.out;
  EXPECT_EQ(Run({"frobnicate"}).code, 2);
  // What hallocctl prints goes out with its control characters escaped,
  // whoever wrote it: here the command line (unknown command '...'), as
  // the replies of whatever daemon answered (clients/cli/safe_output.h).
  Result forged = Run({"\"$(printf 'x\\033]0;owned\\007\\033[2J')\""});
  EXPECT_EQ(forged.code, 2) << forged.out;
  EXPECT_EQ(forged.out.find('\x1b'), std::string::npos) << absl::CHexEscape(forged.out);
  EXPECT_TRUE(absl::StrContains(forged.out, "x\\x1b]0;owned\\x07\\x1b[2J")) << forged.out;
  // Output that cannot be written is not success (a cut .prom file).
  EXPECT_EQ(Run({"stats", "--prometheus", ">/dev/full"}).code, 5);
  EXPECT_EQ(Run({"stats", "--prometheus", ">/dev/null"}).code, 0);
  // A reader that went away (`| true`): exit 5 too, not SIGPIPE's 141, and
  // watch stops instead of writing on forever.
  const ConnectOptions o = daemon().connect_options();
  const std::string piped = absl::StrCat(
      "{ ( HALLOC_CONTROL_SOCKET=", o.control_socket, " HALLOC_BROKER_SOCKET=", o.broker_socket,
      " ", HallocctlPath(), " watch --interval=10ms --iterations=1000 2>/dev/null;",
      " echo rc=$? >&3 ) | true; } 3>&1");
  FILE* p = popen(piped.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::array<char, 256> buf{};
  std::string said;
  for (size_t n; (n = fread(buf.data(), 1, buf.size(), p)) > 0;) said.append(buf.data(), n);
  pclose(p);
  EXPECT_EQ(said, "rc=5\n");
  EXPECT_EQ(Run({"describe"}).code, 2);
  EXPECT_EQ(Run({"describe", "abc"}).code, 2);
  Result unknown = Run({"describe", "12345"});
  EXPECT_EQ(unknown.code, 4) << unknown.out;
  EXPECT_TRUE(absl::StrContains(unknown.out, "NOT_FOUND")) << unknown.out;
  Result down = Run({"stats"}, /*reachable=*/false);
  EXPECT_EQ(down.code, 3) << down.out;
  EXPECT_TRUE(absl::StrContains(down.out, "is hallocd running?")) << down.out;
}

TEST_F(HallocctlTest, MalformedCommandLinesExitTwoAndReachNoDaemon) {
  const std::vector<std::vector<std::string>> cases = {
      {"allocate", "--size", "abc"},
      {"allocate", "--size"},
      {"--no_such_flag", "stats"},
      {"stats", "extra"},
      {"import"},
      {"import", "a", "b"},
      {"watch", "--interval=0s"},
      {"watch", "--iterations=-1"},
      {"policy", "frob", "x"},
      {"list", "--json=maybe"},
  };
  for (const auto& args : cases) {
    SCOPED_TRACE(absl::StrJoin(args, " "));
    Result r = Run(args);
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_TRUE(absl::StrContains(r.out, "see hallocctl --help")) << r.out;
  }
  // Told before hallocd is reached: exit 2 with no daemon there either (it
  // was 3, "cannot reach hallocd"), and no session opened for them.
  const std::vector<std::vector<std::string>> judged_before = {
      {"describe", "abc"},
      {"allocate"},
      {"allocate", "--format", "NOPE", "--width", "64", "--height", "64"},
      {"supported", "--format", "NOPE", "--width", "64", "--height", "64"},
      {"watch", "--interval=0s"},
  };
  for (const auto& args : judged_before) {
    SCOPED_TRACE(absl::StrJoin(args, " "));
    Result unreached = Run(args, /*reachable=*/false);
    EXPECT_EQ(unreached.code, 2) << unreached.out;
    EXPECT_TRUE(absl::StrContains(unreached.out, "see hallocctl --help")) << unreached.out;
    EXPECT_EQ(Run(args).code, 2);
  }
  absl::StatusOr<v1::StatsResponse> sessions = client().Stats();
  ASSERT_TRUE(sessions.ok());
  EXPECT_EQ(sessions->sessions(), 1u) << "only the test's own";
  // The commands on held buffers need a session to hold them.
  for (const char* cmd : {"share 1 --uid 0", "release 1", "revoke 1",
                          "set-metadata 1 dataspace 1"}) {
    SCOPED_TRACE(cmd);
    Result r = Run({cmd});
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_TRUE(absl::StrContains(r.out, "run it inside `hallocctl session`")) << r.out;
  }
  absl::StatusOr<v1::StatsResponse> stats = client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->allocations_total(), 0u);
}

TEST_F(HallocctlTest, HelpListsEveryCommandAndExitCode) {
  Result r = Run({"--help"});
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* text :
       {"allocate", "import TOKEN", "list", "describe ID", "stats", "dump", "supported",
        "watch", "policy check FILE", "session", "share ID", "revoke GRANT", "release ID",
        "set-metadata ID", "--json", "--map-check", "--iterations",
        "4 no such buffer, grant or grant token"}) {
    EXPECT_TRUE(absl::StrContains(r.out, text)) << text;
  }
}

TEST_F(HallocctlTest, SupportedListsFormatsAndAgreesWithAllocate) {
  Result table = Run({"supported"});
  EXPECT_EQ(table.code, 0);
  for (const char* f : {"NV12", "P010", "ARGB8888", "YVU420", "BLOB"}) {
    EXPECT_TRUE(absl::StrContains(table.out, f)) << f;
  }
  EXPECT_EQ(Run({"supported", "--format", "NV12", "--width", "64", "--height", "64"}).code, 0);
  EXPECT_EQ(Run({"supported", "--format", "NV12", "--width", "0", "--height", "64"}).code, 1);
  EXPECT_EQ(Run({"allocate", "--format", "NV12", "--width", "0", "--height", "64"}).code, 1);
}

TEST_F(HallocctlTest, ListAllShowsOtherSessionsBuffersAndStatsCounts) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(8192, 0, "mine"));
  ASSERT_TRUE(b.ok());
  Result list = Run({"list", "--all"});
  EXPECT_EQ(list.code, 0) << list.out;
  EXPECT_TRUE(absl::StrContains(list.out, "mine")) << list.out;
  Result desc = Run({"describe", std::to_string(b->id())});
  EXPECT_EQ(desc.code, 0) << desc.out;
  Result stats = Run({"stats"});
  EXPECT_TRUE(absl::StrContains(stats.out, "live buffers  1")) << stats.out;
  EXPECT_TRUE(absl::StrContains(stats.out, "buffer limit  ")) << stats.out;
  EXPECT_FALSE(absl::StrContains(stats.out, "released, still held")) << stats.out;
  // Released while this process keeps the fd: still charged, and said so.
  absl::StatusOr<UniqueFd> kept = b->TakeFd();
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_TRUE(client().Release(b->id()).ok());
  stats = Run({"stats"});
  EXPECT_TRUE(absl::StrContains(stats.out, "live buffers  0")) << stats.out;
  EXPECT_TRUE(absl::StrContains(stats.out, "released, still held  1 buffers, 8192 bytes"))
      << stats.out;
}

TEST_F(HallocctlTest, SessionAllocatesSetsMetadataAndReleases) {
  std::unique_ptr<Proc> s = Start({"session"});
  Proc::Reply a = s->Command("allocate --format NV12 --width 64 --height 64 --name flow");
  ASSERT_EQ(a.status, "ok") << a.out;
  const uint64_t id = NumberAfter(a.out, "buffer ");
  ASSERT_NE(id, 0u) << a.out;
  const std::string sid = std::to_string(id);

  Proc::Reply d = s->Command("describe " + sid);
  EXPECT_EQ(d.status, "ok");
  EXPECT_TRUE(absl::StrContains(
      d.out, "metadata: dataspace 0x0  blend-mode unset  crop 0,0,64,64 0,0,32,32"))
      << d.out;
  Proc::Reply ds = s->Command("set-metadata " + sid + " dataspace 0x10c10000");
  EXPECT_EQ(ds.status, "ok");
  EXPECT_TRUE(absl::StrContains(ds.out, "dataspace 0x10c10000")) << ds.out;
  Proc::Reply bm = s->Command("set-metadata " + sid + " blend-mode premultiplied");
  EXPECT_EQ(bm.status, "ok");
  EXPECT_TRUE(absl::StrContains(bm.out, "blend-mode premultiplied")) << bm.out;
  Proc::Reply cr = s->Command("set-metadata " + sid + " crop 0,0,32,32 0,0,16,16");
  EXPECT_EQ(cr.status, "ok");
  EXPECT_TRUE(absl::StrContains(cr.out, "crop 0,0,32,32 0,0,16,16")) << cr.out;

  // hallocd stored what the session set.
  absl::StatusOr<std::vector<v1::BufferInfo>> all = client().List(true);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->front().metadata().dataspace(), 0x10c10000);
  EXPECT_EQ(all->front().metadata().blend_mode(), v1::BLEND_MODE_PREMULTIPLIED);
  ASSERT_EQ(all->front().metadata().crop_size(), 2);
  EXPECT_EQ(all->front().metadata().crop(1).right(), 16);

  Proc::Reply help = s->Command("help");
  EXPECT_EQ(help.status, "ok");
  EXPECT_TRUE(absl::StrContains(help.out, "set-metadata ID dataspace VALUE")) << help.out;
  Proc::Reply l = s->Command("list");
  EXPECT_EQ(l.status, "ok");
  EXPECT_TRUE(absl::StrContains(l.out, "buffer " + sid + "  flow")) << l.out;
  EXPECT_EQ(s->Command("release " + sid).status, "ok");
  EXPECT_EQ(Holders(id), 0);
  Proc::Reply gone = s->Command("describe " + sid);
  EXPECT_TRUE(absl::StartsWith(gone.status, "error 4: NOT_FOUND")) << gone.status;
  // Comments and blank lines run nothing and print nothing: the next reply
  // is the next command's.
  s->Send("# a comment");
  s->Send("");
  Proc::Reply st = s->Command("stats");
  EXPECT_EQ(st.status, "ok");
  EXPECT_TRUE(absl::StartsWith(st.out, "live buffers  0")) << st.out;
  s->CloseStdin();
  EXPECT_EQ(s->Wait(), 4);  // the first command that failed: describe
}

TEST_F(HallocctlTest, SessionAnswersEachBadInputWithItsExitCode) {
  std::unique_ptr<Proc> s = Start({"session"});
  Proc::Reply a = s->Command("allocate --format NV12 --width 64 --height 64");
  ASSERT_EQ(a.status, "ok") << a.out;
  const std::string id = std::to_string(NumberAfter(a.out, "buffer "));
  const std::string uid = std::to_string(getuid());
  struct Case {
    std::string line;
    std::string status;  // prefix
  };
  const std::vector<Case> cases = {
      // Unknown to this session.
      {"describe 999999", "error 4: NOT_FOUND"},
      {"release 999999", "error 4: NOT_FOUND"},
      {"share 999999 --uid " + uid, "error 4: NOT_FOUND"},
      {"revoke 999999", "error 4: NOT_FOUND"},
      {"set-metadata 999999 dataspace 1", "error 4: NOT_FOUND"},
      {"import 0123456789abcdef0123456789abcdef", "error 4: NOT_FOUND"},
      {"import not-a-token", "error 4: NOT_FOUND"},
      // Values hallocd refuses.
      {"set-metadata " + id + " dataspace -1", "error 1: INVALID_ARGUMENT"},
      {"set-metadata " + id + " crop 0,0,65,64 0,0,32,32", "error 1: INVALID_ARGUMENT"},
      {"set-metadata " + id + " crop 0,0,64,64", "error 1: INVALID_ARGUMENT"},
      {"share " + id + " --uid " + uid + " --access none", "error 1: FAILED_PRECONDITION"},
      // Malformed: never sent.
      {"set-metadata " + id + " dataspace abc", "error 2: dataspace 'abc'"},
      {"set-metadata " + id + " dataspace 0x80000000", "error 2: dataspace"},
      {"set-metadata " + id + " blend-mode sideways", "error 2: set-metadata ID blend-mode"},
      {"set-metadata " + id + " crop 1,2,3", "error 2: crop rectangle '1,2,3'"},
      {"set-metadata " + id + " shininess 1", "error 2: set-metadata: 'shininess'"},
      {"set-metadata " + id + " dataspace", "error 2: usage: set-metadata"},
      {"share " + id, "error 2: share: name the peer"},
      {"share " + id + " --uid 0 --client compositor", "error 2: share: name the peer"},
      {"share " + id + " --uid " + uid + " --access sideways", "error 2: --access"},
      {"share " + id + " --uid -7", "error 2: --uid -7"},
      {"describe", "error 2: usage: describe ID"},
      {"describe abc", "error 2: 'abc' is not a buffer id"},
      {"revoke x", "error 2: 'x' is not a grant id"},
      {"frobnicate", "error 2: unknown command 'frobnicate'"},
      {"allocate --size abc", "error 2: --size"},
      {"allocate --size 4096 --hold", "error 2: --hold cannot be used in a session"},
      {"list --control_socket=/x", "error 2: --control_socket cannot be used"},
      {"watch", "error 2: watch cannot run inside a session"},
      {"session", "error 2: session cannot run inside a session"},
      {"--json", "error 2: no command"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    Proc::Reply r = s->Command(c.line);
    EXPECT_TRUE(absl::StartsWith(r.status, c.status)) << r.status;
  }
  // The session goes on, and nothing refused changed the buffer.
  Proc::Reply d = s->Command("describe " + id);
  EXPECT_EQ(d.status, "ok");
  EXPECT_TRUE(absl::StrContains(
      d.out, "metadata: dataspace 0x0  blend-mode unset  crop 0,0,64,64 0,0,32,32"))
      << d.out;
  EXPECT_EQ(Holders(NumberAfter(a.out, "buffer ")), 1);
  s->CloseStdin();
  EXPECT_EQ(s->Wait(), 4);  // the first failure: describe 999999
}

TEST_F(HallocctlTest, ShareInASessionImportInAnotherProcess) {
  std::unique_ptr<Proc> owner = Start({"session"});
  Proc::Reply a = owner->Command("allocate --size 65536 --name shared");
  ASSERT_EQ(a.status, "ok") << a.out;
  const uint64_t id = NumberAfter(a.out, "buffer ");
  Proc::Reply sh = owner->Command(
      absl::StrCat("share ", id, " --uid ", getuid(), " --access read"));
  ASSERT_EQ(sh.status, "ok") << sh.out;
  EXPECT_TRUE(absl::StrContains(sh.out, absl::StrCat("buffer ", id, " to uid ", getuid(),
                                                     ", cpu read: token ")))
      << sh.out;
  const size_t at = sh.out.rfind("token ");
  ASSERT_NE(at, std::string::npos) << sh.out;
  const std::string token = sh.out.substr(at + 6, 32);
  ASSERT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos) << sh.out;
  ASSERT_EQ(sh.out.substr(at + 6), token + "\n") << sh.out;  // the token ends the line
  const uint64_t grant = NumberAfter(sh.out, "grant ");

  // One-shot imports in other processes: the fd carries the grant's rights.
  Result imp = Run({"import", token, "--map-check"});
  EXPECT_EQ(imp.code, 0) << imp.out;
  EXPECT_TRUE(absl::StrContains(imp.out, absl::StrCat("buffer ", id, "  shared"))) << imp.out;
  EXPECT_TRUE(absl::StrContains(imp.out, "cpu read  ")) << imp.out;
  EXPECT_TRUE(absl::StrContains(
      imp.out, "map-check: mapped 65536 bytes read-only; read-write refused"))
      << imp.out;
  Result json = Run({"import", token, "--json"});
  EXPECT_EQ(json.code, 0) << json.out;
  std::optional<v1::BufferInfo> info = FromJson<v1::BufferInfo>(json.out);
  ASSERT_TRUE(info.has_value()) << json.out;
  EXPECT_EQ(info->id(), id);
  EXPECT_EQ(info->cpu_access(), v1::CPU_ACCESS_READ);
  EXPECT_FALSE(info->owned());

  // --hold keeps the import until Ctrl-C.
  std::unique_ptr<Proc> holder = Start({"import", token, "--hold"});
  EXPECT_TRUE(absl::StrContains(holder->ReadUntil("holding"), "holding 1 buffer(s)"));
  EXPECT_EQ(Holders(id), 2);
  holder->Signal(SIGINT);
  EXPECT_EQ(holder->Wait(), 0);
  EXPECT_EQ(AwaitHolders(id, 1), 1);

  // Revoked: no new import.
  EXPECT_EQ(owner->Command(absl::StrCat("revoke ", grant)).status, "ok");
  Result late = Run({"import", token});
  EXPECT_EQ(late.code, 4) << late.out;
  EXPECT_TRUE(absl::StrContains(late.out, "NOT_FOUND")) << late.out;
  owner->CloseStdin();
  EXPECT_EQ(owner->Wait(), 0);
  EXPECT_EQ(AwaitHolders(id, 0), 0);
}

TEST_F(HallocctlTest, AllocateHoldKeepsTheBufferUntilSigterm) {
  std::unique_ptr<Proc> p = Start({"allocate", "--size", "4096", "--hold"});
  const std::string out = p->ReadUntil("holding");
  ASSERT_TRUE(absl::StrContains(out, "holding 1 buffer(s) in session")) << out;
  const uint64_t id = NumberAfter(out, "buffer ");
  EXPECT_EQ(Holders(id), 1);
  p->Signal(SIGTERM);
  EXPECT_EQ(p->Wait(), 0);
  EXPECT_EQ(AwaitHolders(id, 0), 0);
}

TEST_F(HallocctlTest, JsonOutputIsOneParsableObjectPerLine) {
  absl::StatusOr<Buffer> b = client().Allocate(BlobDescriptor(8192, 0, "json"));
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string id = std::to_string(b->id());

  Result list = Run({"list", "--all", "--json"});
  EXPECT_EQ(list.code, 0) << list.out;
  EXPECT_EQ(Count(list.out, "\n"), 1) << list.out;
  std::optional<v1::ListResponse> l = FromJson<v1::ListResponse>(list.out);
  ASSERT_TRUE(l.has_value()) << list.out;
  ASSERT_EQ(l->buffers_size(), 1);
  EXPECT_EQ(l->buffers(0).name(), "json");
  EXPECT_EQ(l->buffers(0).holders_size(), 1);

  Result desc = Run({"describe", id, "--json"});
  EXPECT_EQ(desc.code, 0) << desc.out;
  std::optional<v1::BufferInfo> d = FromJson<v1::BufferInfo>(desc.out);
  ASSERT_TRUE(d.has_value()) << desc.out;
  EXPECT_EQ(d->id(), b->id());
  EXPECT_EQ(d->size(), 8192u);
  // Field names as in the .proto, zero values included.
  EXPECT_TRUE(absl::StrContains(desc.out, "\"owner_uid\":")) << desc.out;
  EXPECT_TRUE(absl::StrContains(desc.out, "\"dataspace\":0")) << desc.out;

  Result stats = Run({"stats", "--json"});
  EXPECT_EQ(stats.code, 0) << stats.out;
  std::optional<v1::StatsResponse> st = FromJson<v1::StatsResponse>(stats.out);
  ASSERT_TRUE(st.has_value()) << stats.out;
  EXPECT_EQ(st->live_buffers(), 1u);
  EXPECT_EQ(st->live_bytes(), 8192u);

  Result dump = Run({"dump", "--json"});
  EXPECT_EQ(dump.code, 0) << dump.out;
  std::optional<v1::DumpResponse> du = FromJson<v1::DumpResponse>(dump.out);
  ASSERT_TRUE(du.has_value()) << dump.out;
  ASSERT_EQ(du->sessions_size(), 2);  // client() and hallocctl's own
  EXPECT_EQ(du->sessions(0).owned_buffers() + du->sessions(1).owned_buffers(), 1u);

  Result formats = Run({"supported", "--json"});
  EXPECT_EQ(formats.code, 0) << formats.out;
  EXPECT_EQ(Count(formats.out, "\n"), 1) << formats.out;
  EXPECT_TRUE(FromJson<google::protobuf::Struct>(formats.out).has_value()) << formats.out;
  EXPECT_TRUE(absl::StrContains(formats.out, "\"name\":\"NV12\"")) << formats.out;
  EXPECT_TRUE(absl::StrContains(formats.out, "\"name\":\"BLOB\"")) << formats.out;

  Result yes = Run({"supported", "--size", "4096", "--json"});
  EXPECT_EQ(yes.code, 0) << yes.out;
  std::optional<v1::IsSupportedResponse> y = FromJson<v1::IsSupportedResponse>(yes.out);
  ASSERT_TRUE(y.has_value()) << yes.out;
  EXPECT_TRUE(y->supported());
  EXPECT_EQ(y->backend(), "memfd");

  // Not supported: the answer on stdout, the refusal in the exit code.
  Result no = Run({"supported", "--format", "NV12", "--width", "0", "--height", "8",
                   "--json"});
  EXPECT_EQ(no.code, 1) << no.out;
  std::optional<v1::IsSupportedResponse> n;
  for (const std::string& line : Lines(no.out)) {  // stderr says why, in words
    if (absl::StartsWith(line, "{")) n = FromJson<v1::IsSupportedResponse>(line);
  }
  ASSERT_TRUE(n.has_value()) << no.out;
  EXPECT_FALSE(n->supported());
  EXPECT_EQ(n->code(), static_cast<int>(absl::StatusCode::kInvalidArgument));

  Result alloc = Run({"allocate", "--size", "4096", "--count", "2", "--json"});
  EXPECT_EQ(alloc.code, 0) << alloc.out;
  std::optional<v1::AllocateResponse> al = FromJson<v1::AllocateResponse>(alloc.out);
  ASSERT_TRUE(al.has_value()) << alloc.out;
  EXPECT_EQ(al->buffers_size(), 2);
}

TEST_F(HallocctlTest, WatchPrintsOneReportPerIterationUntilCtrlC) {
  Result stats = Run({"watch", "--iterations=2", "--interval=10ms"});
  EXPECT_EQ(stats.code, 0) << stats.out;
  EXPECT_EQ(Count(stats.out, "--- stats at "), 2) << stats.out;
  EXPECT_EQ(Count(stats.out, "live buffers  "), 2) << stats.out;

  Result dump = Run({"watch", "--dump", "--iterations", "2", "--interval", "10ms", "--json"});
  EXPECT_EQ(dump.code, 0) << dump.out;
  const std::vector<std::string> lines = Lines(dump.out);
  ASSERT_EQ(lines.size(), 2u) << dump.out;
  for (const std::string& line : lines) {
    std::optional<v1::DumpResponse> d = FromJson<v1::DumpResponse>(line);
    ASSERT_TRUE(d.has_value()) << line;
    EXPECT_EQ(d->sessions_size(), 2);
  }

  std::unique_ptr<Proc> w = Start({"watch", "--interval=50ms"});
  EXPECT_TRUE(absl::StrContains(w->ReadUntil("live buffers"), "live buffers  0"));
  w->Signal(SIGINT);
  EXPECT_EQ(w->Wait(), 0);
}

// On a terminal each report begins by clearing the screen: hallocctl's own
// escape sequence reaches the terminal as it is, while what the daemon's
// replies hold stays escaped (SafeOutput).
TEST_F(HallocctlTest, WatchClearsATerminalWithARealEscapeSequence) {
  UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!master || ::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0) {
    GTEST_SKIP() << "no pseudo-terminal here: " << std::strerror(errno);
  }
  const char* slave = ::ptsname(master.get());
  ASSERT_NE(slave, nullptr);
  // The slave stays open here too, so the master never reads EIO between
  // the child's writes.
  UniqueFd keep(::open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC));
  ASSERT_TRUE(keep) << std::strerror(errno);
  Result r = Run({"watch", "--iterations=2", "--interval=10ms", absl::StrCat(">", slave)});
  EXPECT_EQ(r.code, 0) << r.out;
  std::string out;
  std::array<char, 4096> buf;
  pollfd p{master.get(), POLLIN, 0};
  while (::poll(&p, 1, 500) == 1) {
    const ssize_t n = ::read(master.get(), buf.data(), buf.size());
    if (n <= 0) break;
    out.append(buf.data(), n);
  }
  EXPECT_TRUE(absl::StartsWith(out, "\033[H\033[2J")) << absl::CHexEscape(out.substr(0, 80));
  EXPECT_EQ(Count(out, "\033[H\033[2J"), 2) << absl::CHexEscape(out);
  EXPECT_FALSE(absl::StrContains(out, "\\x1b")) << absl::CHexEscape(out);
  EXPECT_EQ(Count(out, "live buffers  "), 2) << absl::CHexEscape(out);
}

}  // namespace
}  // namespace halloc
