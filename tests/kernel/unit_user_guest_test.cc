// hallocd as its system unit runs it (service/systemd/hallocd.service: its
// own user, CAP_SYS_PTRACE alone, --skip_closed_nodes=false), on the
// module whose nodes the udev rule gives to that user's group: it takes the
// kernel heaps, and the rights it hands out are the kernel's to enforce, as
// under root. setpriv(1) stands in for systemd.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/subprocess.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "clients/cpp/halloc/client.h"
#include "gmock/gmock.h"
#include "tests/kernel/halloc_fixture.h"

namespace halloc_test {
namespace {

using ::halloc::BlobDescriptor;
using ::halloc::Client;

constexpr unsigned kHallocd = 4244;  // uid and gid standing in for hallocd
constexpr uint64_t kSize = 1 << 20;
constexpr uint64_t kCpuReadOften = 0x3;
constexpr uint64_t kGpuTexture = 1 << 8;

// hallocd of this binary's runfiles (the guest runs it outside Bazel).
std::string HallocdBinary() {
  char exe[PATH_MAX] = {};
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return std::string(exe, n > 0 ? n : 0) + ".runfiles/halloc/service/hallocd";
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class UnitUserGuestTest : public HallocTest {
 protected:
  // hallocd as the unit runs it, on the sockets in dir_/run; its log in
  // dir_/hallocd.log.
  absl::StatusOr<halloc::Subprocess> StartHallocd(const std::string& policy) {
    const std::string run = dir_ / "run";
    std::filesystem::create_directory(run);
    if (chown(run.c_str(), kHallocd, kHallocd) != 0) return absl::InternalError("chown run");
    // Where its user can reach it (this binary's runfiles may sit under
    // root's 0700 home).
    const std::string bin = dir_ / "hallocd";
    std::error_code ec;
    std::filesystem::copy_file(HallocdBinary(), bin,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec || chmod(bin.c_str(), 0755) != 0) {
      return absl::InternalError("copy " + HallocdBinary() + ": " + ec.message());
    }
    const std::string policy_file = dir_ / "policy.textproto";
    std::ofstream(policy_file) << policy;
    chmod(policy_file.c_str(), 0644);
    const std::string id = absl::StrCat(kHallocd);
    halloc::SpawnOptions o;
    o.argv = {"/usr/bin/setpriv",
              "--reuid=" + id,
              "--regid=" + id,
              "--clear-groups",
              "--inh-caps=-all,+sys_ptrace",
              "--ambient-caps=-all,+sys_ptrace",
              "--bounding-set=-all,+sys_ptrace",
              "--no-new-privs",
              bin,
              "--policy=" + policy_file,
              "--skip_closed_nodes=false",
              "--control_socket=" + run + "/control.sock",
              "--broker_socket=" + run + "/broker.sock"};
    log_ = dir_ / "hallocd.log";
    halloc::UniqueFd log(open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    o.stderr_fd = log.get();
    opts_.control_socket = run + "/control.sock";
    opts_.broker_socket = run + "/broker.sock";
    return halloc::Subprocess::Spawn(o);
  }
  absl::StatusOr<Client> Connect(halloc::Subprocess& hallocd) {
    absl::StatusOr<Client> c = absl::UnavailableError("not tried");
    for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end;) {
      c = Client::Connect(opts_);
      if (c.ok() || hallocd.Wait(absl::ZeroDuration()).has_value()) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return c;
  }
  std::string Log() const { return ReadAll(log_); }

  halloc::testing::TempDir dir_{"unit-user", 0755};
  halloc::ConnectOptions opts_;
  std::string log_;
};

TEST_F(UnitUserGuestTest, HallocdAsItsOwnUserServesTheKernelHeaps) {
  if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "no setpriv (util-linux) here";
  constexpr char kPolicy[] = R"(
    clients {
      name: "root"
      match { uids: 0 }
      usages: "cpu_read_often" usages: "gpu_texture"
      heaps: "halloc"
      max_cpu_access: CPU_ACCESS_READ
      attach_devices: "vgem"
    })";
  {
    // The nodes as the kernel makes them (root's 0600): hallocd waits for
    // them a while (udev may be late), then stops, naming the first, rather
    // than fall back to memfd.
    absl::StatusOr<halloc::Subprocess> hallocd = StartHallocd(kPolicy);
    ASSERT_TRUE(hallocd.ok()) << hallocd.status();
    const std::optional<int> status = hallocd->Wait(absl::Seconds(30));
    ASSERT_TRUE(status.has_value()) << "hallocd started on nodes closed to it:\n" << Log();
    // The status hallocd.service does not restart on (RestartPreventExitStatus=).
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 78) << *status;
    EXPECT_THAT(Log(), ::testing::HasSubstr(std::string(HALLOC_HEAP_SYSTEM_PATH) +
                                            " (Permission denied): it is there, but closed"));
    EXPECT_THAT(Log(), ::testing::HasSubstr("waiting up to 5s for it to open"));
  }
  // Given to its group while it waits (as udev does, late in a boot), the
  // nodes serve it.
  absl::StatusOr<halloc::Subprocess> hallocd = StartHallocd(kPolicy);
  ASSERT_TRUE(hallocd.ok()) << hallocd.status();
  // Once it says it waits (under TCG its start took more than the second
  // this once slept: the nodes were given before it looked, and it never
  // waited).
  for (absl::Time end = absl::Now() + absl::Seconds(30);
       absl::Now() < end && !absl::StrContains(Log(), "waiting up to 5s for it to open");) {
    ASSERT_FALSE(hallocd->Wait(absl::ZeroDuration()).has_value()) << "hallocd ended:\n" << Log();
    absl::SleepFor(absl::Milliseconds(20));
  }
  NodesToGroup given(kHallocd);
  ASSERT_TRUE(given.ok());
  absl::StatusOr<Client> client = Connect(*hallocd);
  ASSERT_TRUE(client.ok()) << client.status() << "\n" << Log();
  EXPECT_THAT(Log(), ::testing::HasSubstr("waiting up to 5s for it to open"));
  EXPECT_THAT(Log(), ::testing::HasSubstr("backend: halloc"));
  const std::string status = ReadAll(absl::StrCat("/proc/", hallocd->pid(), "/status"));
  EXPECT_THAT(status, ::testing::HasSubstr(absl::StrCat("Uid:\t", kHallocd, "\t")));
  EXPECT_THAT(status, ::testing::HasSubstr("CapEff:\t0000000000080000"));

  // A view made by the unprivileged hallocd: read-only, vgem only.
  absl::StatusOr<halloc::Buffer> buf =
      client->Allocate(BlobDescriptor(kSize, kCpuReadOften | kGpuTexture, "ro"));
  ASSERT_TRUE(buf.ok()) << buf.status() << "\n" << Log();
  halloc_buffer_info info = {};
  ASSERT_EQ(Info(ctl_.get(), buf->fd(), &info), 0);
  EXPECT_NE(info.flags & HALLOC_INFO_IS_VIEW, 0u);
  EXPECT_EQ(info.cpu_access, HALLOC_CPU_READ);
  EXPECT_TRUE(buf->Map(halloc::Access::kRead).ok());
  EXPECT_EQ(Sync(buf->fd(), DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE), -EPERM);
  EXPECT_TRUE(client->Release(buf->id()).ok());
}

}  // namespace
}  // namespace halloc_test
