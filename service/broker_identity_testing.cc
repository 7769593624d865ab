#include "service/broker_identity_testing.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/test_child.h"
#include "service/broker_test_util.h"

namespace halloc {

using testing::TestChild;

int AllocateCode(int sock) {
  size_t fds = 0;
  return static_cast<int>(AllocateOn(sock, 4096, &fds).code());
}

void TrustOnlyThisExecutable(Allocator& core) {
  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  absl::StatusOr<std::shared_ptr<const Policy>> policy = Policy::Parse(
      absl::StrCat("clients { name: \"trusted\" match { exe: \"", self,
                   "\" } usages: \"*\" heaps: \"*\" max_cpu_access: CPU_ACCESS_READ_WRITE "
                   "share_to: \"*\" receive_from: \"*\" }\n"
                   "clients { name: \"others\" match { any: true } receive_from: \"*\" }\n"),
      "broker_identity_test");
  ASSERT_TRUE(policy.ok()) << policy.status();
  core.SetPolicy(*policy);
}

BrokerConnection TrustedOrExit(const std::string& path) {
  absl::StatusOr<BrokerConnection> c = ConnectBroker(path, absl::Seconds(10));
  if (!c.ok()) ::_exit(1);
  if (AllocateCode(c->fd.get()) != 0) ::_exit(2);
  return *std::move(c);
}

// Child "trusted-then-python" (args: broker socket, reply fd, request in
// hex): verifies as this executable and is trusted, then execs python,
// which sends the request on the verified socket (fd 3) and prints the
// reply (hex) on the reply fd before it exits.
int TrustedThenPython(absl::Span<const std::string> args, int) {
  int reply = -1;
  if (args.size() != 3 || !absl::SimpleAtoi(args[1], &reply)) return 5;
  const BrokerConnection c = TrustedOrExit(args[0]);
  if (::dup2(reply, 1) != 1 || ::dup2(c.fd.get(), 3) != 3 || ::fcntl(3, F_SETFD, 0) != 0) {
    return 3;
  }
  ::execl(kPython, kPython, "-c",
          "import os, sys; os.write(3, bytes.fromhex(sys.argv[1])); "
          "print(os.read(3, 65536).hex())",
          args[2].c_str(), static_cast<char*>(nullptr));
  return 4;
}
HALLOC_TEST_CHILD("trusted-then-python", TrustedThenPython);

absl::StatusOr<v1::BrokerReply> AskedAfterExec(const std::string& path,
                                               const v1::BrokerRequest& req) {
  const std::string hex = absl::BytesToHexString(req.SerializeAsString());
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  UniqueFd reply_r(out[0]), reply_w(out[1]);
  ASSIGN_OR_RETURN(TestChild child,
                   TestChild::Spawn("trusted-then-python", {path, absl::StrCat(reply_w.get()), hex},
                                    {reply_w.get()}));
  reply_w.reset();
  std::string printed;
  char buf[4096];
  for (ssize_t n; (n = ::read(reply_r.get(), buf, sizeof(buf))) > 0;) printed.append(buf, n);
  const std::optional<int> status = child.Wait(absl::Seconds(30));
  if (!status.has_value() || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat(
        "the verified process, before its exec, was not trusted: status ", status.value_or(-1)));
  }
  v1::BrokerFrame frame;
  if (!frame.ParseFromString(absl::HexStringToBytes(absl::StripAsciiWhitespace(printed))) ||
      !frame.has_reply()) {
    return absl::DataLossError(absl::StrCat("not a reply: ", printed));
  }
  return std::move(*frame.mutable_reply());
}

}  // namespace halloc
