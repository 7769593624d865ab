#include "service/broker.h"

#include <glog/logging.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "service/util/os_error.h"
#include "service/util/scm.h"
#include "service/util/status_macros.h"

namespace halloc {
namespace {

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5
#endif

// The peer's executable. With SO_PEERPIDFD, the pidfd pins the process: if
// it is still alive after we read /proc/<pid>/exe, that pid was not recycled
// meanwhile. Without it (older kernels) the read races pid reuse; the result
// is then only as good as SO_PEERCRED's pid.
std::string PeerExe(int conn, pid_t pid) {
  int raw = -1;
  socklen_t len = sizeof(raw);
  UniqueFd pidfd;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &raw, &len) == 0) pidfd.reset(raw);
  char buf[4096];
  const std::string link = absl::StrCat("/proc/", pid, "/exe");
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  if (pidfd) {
    pollfd pfd{pidfd.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 0) != 0) return "";  // exited: cannot vouch for it
  }
  return std::string(buf, static_cast<size_t>(n));
}

constexpr uint64_t kListenerKey = 0;
constexpr uint64_t kWakeKey = ~uint64_t{0};

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path '", path, "' is empty or longer than ",
        sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

absl::Status RemoveStaleSocket(const std::string& path) {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(
        absl::StrCat(path, " exists and is not a socket"));
  }
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    UniqueFd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!probe) return ErrnoStatus(errno, "socket");
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr),
                  sizeof(addr)) == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("a server is already listening on ", path));
    }
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("unlink(", path, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> BindUnixSocket(const std::string& path, int type,
                                        mode_t mode) {
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  RETURN_IF_ERROR(RemoveStaleSocket(path));
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("bind(", path, ")"));
  }
  if (::chmod(path.c_str(), mode) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod(", path, ")"));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    return ErrnoStatus(errno, absl::StrCat("listen(", path, ")"));
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(const std::string& path,
                                                      mode_t mode,
                                                      Allocator* core) {
  ASSIGN_OR_RETURN(UniqueFd listener,
                   BindUnixSocket(path, SOCK_SEQPACKET, mode));
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoStatus(errno, "eventfd");
  for (auto [fd, key] : {std::pair{listener.get(), kListenerKey},
                         std::pair{wake.get(), kWakeKey}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoStatus(errno, "epoll_ctl(ADD)");
    }
  }
  std::unique_ptr<Broker> broker(new Broker(core, std::move(listener),
                                            std::move(epoll), std::move(wake),
                                            path));
  broker->thread_ = std::thread([b = broker.get()] { b->Run(); });
  return broker;
}

Broker::Broker(Allocator* core, UniqueFd listener, UniqueFd epoll,
               UniqueFd wake, std::string path)
    : core_(core), listener_(std::move(listener)), epoll_(std::move(epoll)),
      wake_(std::move(wake)), path_(std::move(path)) {}

Broker::~Broker() { Stop(); }

void Broker::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    PLOG(ERROR) << "broker: cannot wake the broker thread";
  }
  if (thread_.joinable()) thread_.join();
  std::vector<uint64_t> ids;
  for (const auto& [id, s] : sessions_) ids.push_back(id);
  for (uint64_t id : ids) EndSession(id);
  ::unlink(path_.c_str());
}

void Broker::Run() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_.get(), events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      PLOG(ERROR) << "broker: epoll_wait";
      return;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == kWakeKey) return;
      if (key == kListenerKey) {
        Accept();
      } else {
        OnReadable(key);
      }
    }
  }
}

void Broker::Accept() {
  UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) {
    // EMFILE and friends: the client sees its connect fail or hang up.
    PLOG(WARNING) << "broker: accept4";
    return;
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    PLOG(WARNING) << "broker: getsockopt(SO_PEERCRED)";
    return;
  }
  const int fd = conn.get();
  std::string exe = PeerExe(fd, cred.pid);
  absl::StatusOr<std::shared_ptr<Session>> session =
      core_->OpenSession({cred.uid, cred.gid, cred.pid, exe}, std::move(conn));
  if (!session.ok()) {
    LOG(WARNING) << "broker: refused pid " << cred.pid << " uid " << cred.uid
                 << ": " << session.status();
    return;
  }
  const uint64_t id = (*session)->id();
  v1::BrokerFrame frame;
  v1::Hello* hello = frame.mutable_hello();
  hello->set_version(1);
  hello->set_session_id(id);
  hello->set_session_token((*session)->token());
  hello->set_uid(cred.uid);
  hello->set_gid(cred.gid);
  hello->set_pid(cred.pid);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = id;
  absl::Status status = SendRecord(fd, frame.SerializeAsString(), {}, true);
  if (status.ok() && ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    status = ErrnoStatus(errno, "epoll_ctl(ADD)");
  }
  if (!status.ok()) {
    LOG(WARNING) << "broker: session " << id << " failed to start: " << status;
    core_->CloseSession(id);
    return;
  }
  sessions_.emplace(id, *std::move(session));
  LOG(INFO) << "session " << id << " opened: pid " << cred.pid << " uid "
            << cred.uid << " gid " << cred.gid << " exe " << exe;
}

void Broker::OnReadable(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  // Drain: clients send nothing, so anything but "closed" is discarded.
  for (;;) {
    absl::StatusOr<Record> rec = ReceiveRecord(it->second->broker_fd(), true);
    if (rec.ok() || rec.status().code() == absl::StatusCode::kDataLoss) continue;
    if (rec.status().code() == absl::StatusCode::kResourceExhausted) return;
    break;  // peer closed or error
  }
  EndSession(session_id);
}

void Broker::EndSession(uint64_t session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->broker_fd(), nullptr);
  const Identity creds = it->second->creds();
  sessions_.erase(it);
  core_->CloseSession(session_id);
  LOG(INFO) << "session " << session_id << " closed (pid " << creds.pid
            << " uid " << creds.uid << ")";
}

}  // namespace halloc
