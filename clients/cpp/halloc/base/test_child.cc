#include "clients/cpp/halloc/base/test_child.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/status_macros.h"

namespace halloc::testing {
namespace {

constexpr absl::string_view kChildFlag = "--halloc_test_child=";

// Filled at static initialization, read after: no lock needed.
absl::flat_hash_map<std::string, ChildMain>& Registry() {
  static auto* registry = new absl::flat_hash_map<std::string, ChildMain>();
  return *registry;
}

}  // namespace

bool RegisterChildMain(const char* name, ChildMain main) {
  if (!Registry().emplace(name, main).second) {
    // Two children of one name: Spawn would run the first for both.
    std::fprintf(stderr, "two test children are named \"%s\"\n", name);
    std::abort();
  }
  return true;
}

std::optional<int> RunChildIfAsked(int argc, char** argv) {
  if (argc < 3 || !absl::StartsWith(argv[1], kChildFlag)) return std::nullopt;
  // -1 (ChildArgv's "none") parses too.
  const std::string name(absl::string_view(argv[1]).substr(kChildFlag.size()));
  int report = -1;
  auto it = Registry().find(name);
  if (it == Registry().end() || !absl::SimpleAtoi(argv[2], &report)) {
    std::fprintf(stderr, "no test child named \"%s\" (or a bad report fd)\n", name.c_str());
    return 2;
  }
  alarm(30);  // whatever happens to the test
  const std::vector<std::string> args(argv + 3, argv + argc);
  return it->second(args, report);
}

absl::StatusOr<std::vector<std::string>> ChildArgv(const std::string& name,
                                                   std::vector<std::string> args, int report) {
  if (!Registry().contains(name)) {
    return absl::InvalidArgumentError(absl::StrCat("no test child named \"", name, "\""));
  }
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return ErrnoStatus(errno, "readlink(/proc/self/exe)");
  std::vector<std::string> argv = {std::string(self, static_cast<size_t>(n)),
                                   absl::StrCat(kChildFlag, name), absl::StrCat(report)};
  argv.insert(argv.end(), std::make_move_iterator(args.begin()),
              std::make_move_iterator(args.end()));
  return argv;
}

absl::StatusOr<TestChild> TestChild::Spawn(const std::string& name, std::vector<std::string> args,
                                           std::vector<int> keep_fds) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd read_end(p[0]), write_end(p[1]);
  SpawnOptions o;
  ASSIGN_OR_RETURN(o.argv, ChildArgv(name, std::move(args), write_end.get()));
  o.keep_fds = std::move(keep_fds);
  o.keep_fds.push_back(write_end.get());
  ASSIGN_OR_RETURN(Subprocess process, Subprocess::Spawn(o));
  TestChild child;
  child.process_ = std::move(process);
  child.report_ = std::move(read_end);
  return child;
}

std::optional<std::string> TestChild::Line(absl::Duration timeout) {
  return ReadLine(report_.get(), &buffer_, timeout);
}

std::optional<int> TestChild::Wait(absl::Duration timeout) { return process_.Wait(timeout); }

void TestChild::Kill() {
  if (process_.Signal(SIGKILL)) (void)process_.Wait();
}

std::optional<std::string> ReadLine(int fd, std::string* buffer, absl::Duration timeout,
                                    bool* eof) {
  const absl::Time deadline = absl::Now() + timeout;
  if (eof != nullptr) *eof = false;
  for (;;) {
    if (const size_t nl = buffer->find('\n'); nl != std::string::npos) {
      std::string line = buffer->substr(0, nl);
      buffer->erase(0, nl + 1);
      return line;
    }
    // Polls at least once, also with no time left.
    const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(ms));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return std::nullopt;
    char buf[512];
    const ssize_t got = ::read(fd, buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (eof != nullptr) *eof = true;
      return std::nullopt;
    }
    buffer->append(buf, static_cast<size_t>(got));
  }
}

void WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace halloc::testing
