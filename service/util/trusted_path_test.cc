#include "service/util/trusted_path.h"

#include <endian.h>
#include <fcntl.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "clients/cpp/halloc/base/temp_dir_testing.h"
#include "gtest/gtest.h"
#include "service/util/fake_fuse_testing.h"

namespace halloc {
namespace {

constexpr uid_t kOther = 65534;

class TrustedPathTest : public ::testing::Test {
 protected:
  std::string Mkdir(const std::string& name, mode_t mode) {
    const std::string p = dir_ / name;
    EXPECT_EQ(::mkdir(p.c_str(), 0700), 0) << p;
    EXPECT_EQ(::chmod(p.c_str(), mode), 0) << p;
    return p;
  }
  // Whether this process may give files away (root, with the uid mapped).
  bool CanChown() {
    const std::string p = dir_ / "probe";
    if (::mkdir(p.c_str(), 0700) != 0) return false;
    const bool ok = ::chown(p.c_str(), kOther, kOther) == 0;
    ::rmdir(p.c_str());
    return ok;
  }
  static ino_t Inode(int fd) {
    struct stat st;
    return ::fstat(fd, &st) == 0 ? st.st_ino : 0;
  }
  static ino_t Inode(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  }

  testing::TempDir dir_{"trusted-path", 0755};
};

TEST_F(TrustedPathTest, OpensWhatOpenWouldThroughLinksOfItsOwn) {
  const std::string a = Mkdir("a", 0755);
  ASSERT_EQ(::symlink("a", (dir_ / "rel").c_str()), 0);
  ASSERT_EQ(::symlink(a.c_str(), (dir_ / "abs").c_str()), 0);
  ASSERT_EQ(::symlink("../a/.", (a + "/up").c_str()), 0);
  for (const std::string& p : {a, dir_ / "rel", dir_ / "abs/", dir_ / "a/up/up/./../a"}) {
    SCOPED_TRACE(p);
    absl::StatusOr<UniqueFd> fd = OpenTrusted(p, O_PATH | O_DIRECTORY);
    ASSERT_TRUE(fd.ok()) << fd.status();
    EXPECT_EQ(Inode(fd->get()), Inode(a));
  }
  // A file, and relative to the working directory.
  { std::FILE* f = std::fopen((a + "/file").c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }
  const std::string cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir_.path());
  absl::StatusOr<UniqueFd> file = OpenTrusted("rel/file", O_RDONLY);
  std::filesystem::current_path(cwd);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(Inode(file->get()), Inode(a + "/file"));
  EXPECT_TRUE(OpenTrusted("/", O_PATH | O_DIRECTORY).ok());
}

TEST_F(TrustedPathTest, MissingLoopingAndNotADirectory) {
  EXPECT_EQ(OpenTrusted(dir_ / "none/x", O_PATH).status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(::symlink("loop", (dir_ / "loop").c_str()), 0);
  absl::Status loop = OpenTrusted(dir_ / "loop", O_PATH).status();
  EXPECT_FALSE(loop.ok());
  EXPECT_TRUE(absl::StrContains(loop.message(), std::strerror(ELOOP))) << loop;
  {
    std::FILE* f = std::fopen((dir_ / "file").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  EXPECT_FALSE(OpenTrusted(dir_ / "file/x", O_PATH).ok());
}

// A directory others may write to, without the sticky bit: anything in it
// can be renamed away and replaced.
TEST_F(TrustedPathTest, RefusesAPathThroughADirectoryOthersMayWriteTo) {
  const std::string open = Mkdir("open", 0777);
  Mkdir("open/inner", 0755);
  absl::Status s = OpenTrusted(open + "/inner", O_PATH | O_DIRECTORY).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "without the sticky bit")) << s;
  // The directory itself may be reached (what may be put in it is its
  // user's business: unix_listener checks its socket directory itself).
  EXPECT_TRUE(OpenTrusted(open, O_PATH | O_DIRECTORY).ok());
}

// An access ACL naming another user with write, on what root owns with
// group root: the mode reads 0664 or 0775 (the group bits are the ACL's
// mask), which counted as root's alone. False where the file system keeps
// no ACLs (the caller then skips).
bool GrantWriteByAcl(const std::string& path, uid_t user, bool* unsupported) {
  std::string acl;
  const auto add = [&acl](const void* p, size_t n) { acl.append(static_cast<const char*>(p), n); };
  const posix_acl_xattr_header header{htole32(POSIX_ACL_XATTR_VERSION)};
  add(&header, sizeof(header));
  const posix_acl_xattr_entry entries[] = {
      {htole16(ACL_USER_OBJ), htole16(7), htole32(ACL_UNDEFINED_ID)},
      {htole16(ACL_USER), htole16(7), htole32(user)},
      {htole16(ACL_GROUP_OBJ), htole16(5), htole32(ACL_UNDEFINED_ID)},
      {htole16(ACL_MASK), htole16(7), htole32(ACL_UNDEFINED_ID)},
      {htole16(ACL_OTHER), htole16(5), htole32(ACL_UNDEFINED_ID)},
  };
  add(entries, sizeof(entries));
  if (::setxattr(path.c_str(), "system.posix_acl_access", acl.data(), acl.size(), 0) == 0) {
    return true;
  }
  *unsupported = errno == EOPNOTSUPP;
  return false;
}

TEST_F(TrustedPathTest, RefusesWhatAnAclLetsAnotherUserWrite) {
  if (::getegid() != 0) GTEST_SKIP() << "the files must be group root's: run as root";
  const std::string dir = Mkdir("acl", 0755);
  const std::string file = dir + "/policy";
  { UniqueFd f(::open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
  bool unsupported = false;
  if (!GrantWriteByAcl(file, kOther, &unsupported)) {
    if (unsupported) GTEST_SKIP() << "this file system keeps no POSIX ACLs";
    FAIL() << "setxattr(system.posix_acl_access): " << std::strerror(errno);
  }
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  ASSERT_EQ(st.st_mode & 0777, 0775u) << "the mask shows as the group's bits";
  ASSERT_EQ(st.st_gid, 0u);
  EXPECT_TRUE(OthersMayWrite(fd.get(), st)) << "uid " << kOther << " may write it";
  // A directory so: another user could swap what is in it.
  ASSERT_TRUE(GrantWriteByAcl(dir, kOther, &unsupported));
  absl::Status s = OpenTrusted(file, O_RDONLY).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  // An ACL naming only root, or naming others without write, is root's.
  const std::string own = dir + "/own";
  { UniqueFd f(::open(own.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0664)); }
  ASSERT_TRUE(GrantWriteByAcl(own, 0, &unsupported));
  UniqueFd own_fd(::open(own.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(::fstat(own_fd.get(), &st), 0);
  EXPECT_FALSE(OthersMayWrite(own_fd.get(), st));
}

// The review helper's attack: in a sticky directory anyone may write to
// (/tmp), a user's link to a root directory, repointed once hallocd had
// bound its socket through it. Root's own link there is followed.
TEST_F(TrustedPathTest, RefusesAnotherUsersLinkOrDirectoryInAStickyDirectory) {
  if (!CanChown()) GTEST_SKIP() << "cannot give a file to uid " << kOther << " here";
  const std::string sticky = Mkdir("sticky", 01777);
  const std::string target = Mkdir("target", 0755);
  const std::string theirs = sticky + "/theirs";
  ASSERT_EQ(::symlink(target.c_str(), theirs.c_str()), 0);
  ASSERT_EQ(::lchown(theirs.c_str(), kOther, kOther), 0);
  absl::Status s = OpenTrusted(theirs, O_PATH | O_DIRECTORY).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "belongs to uid 65534")) << s;
  const std::string mine = sticky + "/mine";
  ASSERT_EQ(::symlink(target.c_str(), mine.c_str()), 0);
  absl::StatusOr<UniqueFd> fd = OpenTrusted(mine, O_PATH | O_DIRECTORY);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(Inode(fd->get()), Inode(target));
  // Nor another user's directory there, nor anything in a directory of
  // another user's (its owner may rename what is in it).
  const std::string their_dir = Mkdir("sticky/their-dir", 0755);
  ASSERT_EQ(::chown(their_dir.c_str(), kOther, kOther), 0);
  EXPECT_EQ(OpenTrusted(their_dir, O_PATH | O_DIRECTORY).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const std::string owned = Mkdir("owned", 0755);
  Mkdir("owned/inner", 0755);
  ASSERT_EQ(::chown(owned.c_str(), kOther, kOther), 0);
  s = OpenTrusted(owned + "/inner", O_PATH | O_DIRECTORY).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "who could swap")) << s;
  // Also when a link of one's own leads there.
  ASSERT_EQ(::symlink((owned + "/inner").c_str(), (dir_ / "via").c_str()), 0);
  EXPECT_EQ(OpenTrusted(dir_ / "via", O_PATH | O_DIRECTORY).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A FUSE server says who owns what: a user's, mounted with allow_other, may
// say root owns the directory it swaps at will. Nothing on FUSE is trusted:
// not a directory on the way, not the mount's root, not a file opened.
TEST_F(TrustedPathTest, RefusesAnythingOnFuse) {
  const std::string at = Mkdir("fuse", 0755);
  absl::StatusOr<std::unique_ptr<testing::FakeFuse>> fuse = testing::FakeFuse::Mount(at);
  if (!fuse.ok()) GTEST_SKIP() << "no FUSE mount here: " << fuse.status();
  struct stat st;
  ASSERT_EQ(::stat((at + "/d").c_str(), &st), 0) << "the fake server answers";
  ASSERT_EQ(st.st_uid, 0u);
  for (const auto& [path, flags] :
       {std::pair{at, O_PATH | O_DIRECTORY}, std::pair{at + "/d", O_PATH | O_DIRECTORY},
        std::pair{at + "/d/..", O_PATH | O_DIRECTORY},
        std::pair{at + "/f", O_RDONLY | O_NONBLOCK}}) {
    SCOPED_TRACE(path);
    absl::Status s = OpenTrusted(path, flags).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "FUSE")) << s;
  }
  // A link of root's own leading there neither.
  ASSERT_EQ(::symlink((at + "/d").c_str(), (dir_ / "to-fuse").c_str()), 0);
  EXPECT_EQ(OpenTrusted(dir_ / "to-fuse", O_PATH | O_DIRECTORY).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace halloc
