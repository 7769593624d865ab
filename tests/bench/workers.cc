#include "tests/bench/workers.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "clients/cpp/halloc/base/os_error.h"
#include "clients/cpp/halloc/base/protocol.h"
#include "clients/cpp/halloc/base/scm.h"
#include "clients/cpp/halloc/base/status_macros.h"
#include "clients/cpp/halloc/base/unique_fd.h"
#include "clients/cpp/halloc/base/unix_address.h"
#include "clients/cpp/halloc/broker_conn.h"
#include "clients/cpp/halloc/client.h"
#include "echo.grpc.pb.h"
#include "halloc/v1/allocator.grpc.pb.h"
#include "tests/bench/floor_workers.h"

namespace halloc::bench {
namespace {

using Micros = std::vector<double>;

// --- halloc ----------------------------------------------------------------

// --path=grpc makes Allocate, Import, Share and Release gRPC calls; otherwise
// (broker, the default) they travel on the broker socket.
absl::StatusOr<Client> Connect(const Args& a) {
  ConnectOptions opts;
  opts.control_socket = a.Str("control");
  opts.broker_socket = a.Str("broker");
  opts.broker_fast_path = a.Str("path", "broker") != "grpc";
  return Client::Connect(opts);
}

// One empty gRPC echo call: the floor, timed inside the halloc workers
// too, interleaved call by call with what it is the floor of, so that both
// see the same machine (other load on a shared 2-core box drifts).
class EchoProbe {
 public:
  explicit EchoProbe(const std::string& socket) {
    if (socket.empty()) return;
    stub_ = halloc::bench::Echo::NewStub(grpc::CreateChannel(
        "unix:" + socket, grpc::InsecureChannelCredentials()));
  }
  // Microseconds, or NaN without an echo server.
  double Call() {
    if (stub_ == nullptr) return std::nan("");
    const int64_t t0 = NowNs();
    grpc::ClientContext ctx;
    EchoResponse resp;
    stub_->Echo(&ctx, EchoRequest(), &resp);
    return Us(t0, NowNs());
  }

 private:
  std::unique_ptr<halloc::bench::Echo::Stub> stub_;
};

// One Unix-socket round trip carrying an fd (the scm_fd floor), timed
// inside the halloc workers too, interleaved call by call like EchoProbe.
class ScmProbe {
 public:
  explicit ScmProbe(const std::string& socket) {
    if (socket.empty()) return;
    absl::StatusOr<UniqueFd> s = ConnectSeqpacket(socket);
    if (s.ok()) sock_ = *std::move(s);
  }
  // Microseconds, or NaN without an scm server.
  double Call() {
    if (!sock_) return std::nan("");
    const int64_t t0 = NowNs();
    if (!SendScmRequest(sock_.get())) return std::nan("");
    absl::StatusOr<Record> rec = ReceiveRecord(sock_.get(), false);
    const double us = Us(t0, NowNs());
    return rec.ok() && rec->fds.size() == 1 ? us : std::nan("");
  }

 private:
  UniqueFd sock_;
};

// The memfd floor of one buffer (create + size + commit + map), in µs.
double MemfdOnce(uint64_t size) {
  const int64_t t0 = NowNs();
  UniqueFd fd(::memfd_create("bench-floor", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd || ::ftruncate(fd.get(), size) != 0 ||
      ::fallocate(fd.get(), 0, 0, size) != 0) {
    return std::nan("");
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  const double us = Us(t0, NowNs());
  if (p == MAP_FAILED) return std::nan("");
  ::munmap(p, size);
  return us;
}

// The pool's hits and misses so far, over all backends; nullopt if Stats
// fails (the row then says nothing about them).
std::optional<std::pair<uint64_t, uint64_t>> PoolCounts(Client& c) {
  absl::StatusOr<v1::StatsResponse> s = c.Stats();
  if (!s.ok()) return std::nullopt;
  uint64_t hits = 0, misses = 0;
  for (const v1::BackendStats& b : s->backends()) {
    hits += b.pool_hits_total();
    misses += b.pool_misses_total();
  }
  return std::pair{hits, misses};
}

// Allocate → fd in hand → mapped, then (untimed) unmap + close, then a timed
// Release; each iteration also times one echo call, one scm_fd round trip
// (before the Allocate, or with --order=alternate before and after it in
// turn) (and, cold, one local memfd floor). Warm: one name, so the pool (if any)
// stocks that class, paced so that the refill keeps up ("pool.hits_pct"
// says which share of the timed calls the stock served). Cold: a new name
// per call (a class the pool has never seen), so every call creates and
// commits memory on the request path.
int AllocLatency(const Args& a) {
  absl::StatusOr<Client> c = Connect(a);
  if (!c.ok()) return Fail("connect", c.status());
  EchoProbe echo(a.Str("echo"));
  ScmProbe scm(a.Str("scm"));
  const uint64_t size = a.Int("size");
  const int64_t n = a.Int("n", 100);
  const bool cold = a.Str("mode") == "cold";
  const absl::Duration pace = absl::Microseconds(a.Int("pace_us", 0));
  // The scm_fd floor's call before every Allocate ("scm_first"), or before
  // every other one and after the rest ("alternate"): a call made right
  // after another server's tends to find the client moved to the other CPU
  // (the wake-up placed it there) and to pay for following it, so a fixed
  // order charges that to whichever call comes second.
  const bool alternate = a.Str("order") == "alternate";
  Micros alloc, release, echo_us, scm_us, memfd_us;
  std::vector<CallCpus> cpus;  // where each timed Allocate began and ended
  const int64_t warmup = 5;
  std::optional<std::pair<uint64_t, uint64_t>> pool_before;
  for (int64_t i = -warmup; i < n; ++i) {
    if (i == 0) pool_before = PoolCounts(*c);
    const double e = echo.Call();
    const bool scm_after = alternate && (i % 2 != 0);
    double sc = scm_after ? std::nan("") : scm.Call();
    const double f = cold ? MemfdOnce(size) : std::nan("");
    const std::string name = cold ? absl::StrCat("cold-", i) : "warm";
    const int cpu_before = ::sched_getcpu();
    const int64_t t0 = NowNs();
    absl::StatusOr<Buffer> b = c->Allocate(BlobDescriptor(size, 0, name));
    if (!b.ok()) return Fail("Allocate", b.status());
    std::optional<absl::StatusOr<Mapping>> m(b->Map(Access::kReadWrite));
    const int64_t t1 = NowNs();
    const int cpu_after = ::sched_getcpu();
    if (!m->ok()) return Fail("Map", m->status());
    if (scm_after) sc = scm.Call();
    const uint64_t id = b->id();
    m.reset();
    { Buffer gone = std::move(*b); }
    const int64_t t2 = NowNs();
    absl::Status r = c->Release(id);
    const int64_t t3 = NowNs();
    if (!r.ok()) return Fail("Release", r);
    if (i >= 0) {
      cpus.push_back({cpu_before, cpu_after});
      alloc.push_back(Us(t0, t1));
      release.push_back(Us(t2, t3));
      echo_us.push_back(e);
      scm_us.push_back(sc);
      memfd_us.push_back(f);
    }
    // Let the pool stock the class before measuring warm calls.
    if (i == -1 && !cold) absl::SleepFor(absl::Milliseconds(300));
    if (pace > absl::ZeroDuration()) absl::SleepFor(pace);
  }
  // Which share of the timed calls the pool's stock served (a warm row
  // whose refills fell behind measured cold calls too).
  std::string pool;
  const std::optional<std::pair<uint64_t, uint64_t>> pool_after = PoolCounts(*c);
  if (pool_before && pool_after) {
    const uint64_t hits = pool_after->first - pool_before->first;
    const uint64_t total = hits + pool_after->second - pool_before->second;
    if (total > 0) pool = absl::StrCat("pool.hits_pct ", 100.0 * hits / total, "\n");
  }
  // How often the client changed CPU, during a call or between two: each
  // move makes the servers that follow it move too.
  const double moves = CpuChangePct(cpus);
  const std::string placement =
      std::isfinite(moves) ? absl::StrCat("cpu.changes_pct ", moves, "\n") : "";
  Say(FormatSummary("alloc", Summarize(alloc)) +
      FormatSummary("release", Summarize(release)) +
      FormatSummary("echo", Summarize(echo_us)) +
      FormatSummary("scm", Summarize(scm_us)) +
      (cold ? FormatSummary("memfd", Summarize(memfd_us)) : "") + pool + placement);
  return 0;
}

// Share (owner session) + Import (peer session) + map on the peer side;
// the Import alone too, the owner's Revoke once the peer let go, and the
// owner's per-frame SetMetadata (a dataspace) (on the broker, or with
// --path=grpc as gRPC calls).
int ShareLatency(const Args& a) {
  absl::StatusOr<Client> owner = Connect(a);
  absl::StatusOr<Client> peer = Connect(a);
  if (!owner.ok()) return Fail("connect", owner.status());
  if (!peer.ok()) return Fail("connect", peer.status());
  absl::StatusOr<Buffer> b = owner->Allocate(BlobDescriptor(a.Int("size"), 0, "shared"));
  if (!b.ok()) return Fail("Allocate", b.status());
  const int64_t n = a.Int("n", 100);
  EchoProbe echo(a.Str("echo"));
  Micros us, import_us, revoke_us, set_metadata_us, echo_us;
  v1::BufferMetadata frame_meta;
  for (int64_t i = -10; i < n; ++i) {
    const double e = echo.Call();
    const int64_t t0 = NowNs();
    absl::StatusOr<v1::Grant> g = owner->Share(b->id(), ::getuid());
    if (!g.ok()) return Fail("Share", g.status());
    const int64_t import_t0 = NowNs();
    absl::StatusOr<Buffer> got = peer->Import(g->token());
    const int64_t import_t1 = NowNs();
    if (!got.ok()) return Fail("Import", got.status());
    std::optional<absl::StatusOr<Mapping>> m(got->Map(Access::kRead));
    const int64_t t1 = NowNs();
    if (!m->ok()) return Fail("Map", m->status());
    m.reset();
    const uint64_t id = got->id();
    { Buffer gone = std::move(*got); }
    if (absl::Status s = peer->Release(id); !s.ok()) return Fail("Release", s);
    const int64_t revoke_t0 = NowNs();
    if (absl::Status s = owner->Revoke(g->id()); !s.ok()) return Fail("Revoke", s);
    const int64_t revoke_t1 = NowNs();
    frame_meta.set_dataspace(static_cast<int32_t>(i & 0xffff));
    const int64_t meta_t0 = NowNs();
    absl::StatusOr<v1::BufferInfo> set =
        owner->SetMetadata(b->id(), v1::METADATA_DATASPACE, frame_meta);
    const int64_t meta_t1 = NowNs();
    if (!set.ok()) return Fail("SetMetadata", set.status());
    if (i >= 0) {
      us.push_back(Us(t0, t1));
      import_us.push_back(Us(import_t0, import_t1));
      revoke_us.push_back(Us(revoke_t0, revoke_t1));
      set_metadata_us.push_back(Us(meta_t0, meta_t1));
      echo_us.push_back(e);
    }
  }
  Say(FormatSummary("share", Summarize(us)) + FormatSummary("import", Summarize(import_us)) +
      FormatSummary("revoke", Summarize(revoke_us)) +
      FormatSummary("set_metadata", Summarize(set_metadata_us)) +
      FormatSummary("echo", Summarize(echo_us)));
  return 0;
}

// The owner's Revoke of a grant its peers imported and shared on `onward`
// times in all (to their own uid; 1000 per peer session, under a session's
// limit): the revoke takes those too, one by one.
int RevokeFanout(const Args& a) {
  constexpr int64_t kPerPeer = 1000;
  const int64_t onward = a.Int("onward"), n = a.Int("n", 10);
  absl::StatusOr<Client> owner = Connect(a);
  if (!owner.ok()) return Fail("connect", owner.status());
  std::vector<Client> peers;
  for (int64_t k = 0; k < std::max<int64_t>(1, (onward + kPerPeer - 1) / kPerPeer); ++k) {
    absl::StatusOr<Client> peer = Connect(a);
    if (!peer.ok()) return Fail("connect", peer.status());
    peers.push_back(*std::move(peer));
  }
  absl::StatusOr<Buffer> b = owner->Allocate(BlobDescriptor(4096, 0, "fanout"));
  if (!b.ok()) return Fail("Allocate", b.status());
  Micros revoke_us;
  for (int64_t i = -2; i < n; ++i) {
    absl::StatusOr<v1::Grant> g = owner->Share(b->id(), ::getuid());
    if (!g.ok()) return Fail("Share", g.status());
    std::vector<Buffer> got;
    for (int64_t k = 0; k < onward || got.empty(); ++k) {
      if (k % kPerPeer == 0) {
        absl::StatusOr<Buffer> imported = peers[k / kPerPeer].Import(g->token());
        if (!imported.ok()) return Fail("Import", imported.status());
        got.push_back(*std::move(imported));
      }
      if (k >= onward) break;
      if (absl::StatusOr<v1::Grant> on = peers[k / kPerPeer].Share(got.back().id(), ::getuid());
          !on.ok()) {
        return Fail("Share onward", on.status());
      }
    }
    const int64_t t0 = NowNs();
    if (absl::Status s = owner->Revoke(g->id()); !s.ok()) return Fail("Revoke", s);
    const int64_t t1 = NowNs();
    if (i >= 0) revoke_us.push_back(Us(t0, t1));
  }
  Say(FormatSummary("revoke", Summarize(revoke_us)));
  return 0;
}

// GB/s of `passes` copies of `size` bytes from `src` into `dst`: the median
// pass and the first one (which, for a fresh mapping, takes the faults).
std::pair<double, double> CopyBandwidth(const void* src, void* dst,
                                        uint64_t size, int passes) {
  std::vector<double> gbps;
  for (int i = 0; i < passes; ++i) {
    const int64_t t0 = NowNs();
    std::memcpy(dst, src, size);
    asm volatile("" : : "r"(dst) : "memory");
    const int64_t t1 = NowNs();
    gbps.push_back(static_cast<double>(size) / (t1 - t0));
  }
  const double first = gbps.front();
  return {Summarize(gbps).p50, first};
}

// A producer session fills an 8 MiB buffer and shares it read-only; a
// consumer session imports it, maps it and reads it (copies it out), next to
// a plain memcpy between two private buffers of the same size.
int ZeroCopy(const Args& a) {
  absl::StatusOr<Client> producer = Connect(a);
  absl::StatusOr<Client> consumer = Connect(a);
  if (!producer.ok()) return Fail("connect", producer.status());
  if (!consumer.ok()) return Fail("connect", consumer.status());
  const uint64_t size = a.Int("size", 8 << 20);
  const int passes = static_cast<int>(a.Int("passes", 20));
  absl::StatusOr<Buffer> b = producer->Allocate(BlobDescriptor(size, 0, "frame"));
  if (!b.ok()) return Fail("Allocate", b.status());
  {
    absl::StatusOr<Mapping> w = b->Map(Access::kReadWrite);
    if (!w.ok()) return Fail("Map", w.status());
    std::memset(w->data(), 0x5a, size);
  }
  absl::StatusOr<v1::Grant> g =
      producer->Share(b->id(), ::getuid(), v1::CPU_ACCESS_READ);
  if (!g.ok()) return Fail("Share", g.status());
  absl::StatusOr<Buffer> in = consumer->Import(g->token());
  if (!in.ok()) return Fail("Import", in.status());
  std::vector<char> src(size, 1), dst(size, 2);
  const auto [memcpy_gbps, memcpy_first] =
      CopyBandwidth(src.data(), dst.data(), size, passes);
  absl::StatusOr<Mapping> r = in->Map(Access::kRead);
  if (!r.ok()) return Fail("Map", r.status());
  const auto [read_gbps, read_first] =
      CopyBandwidth(r->data(), dst.data(), size, passes);
  if (dst[size / 2] != 0x5a) {
    return Fail("zerocopy", absl::DataLossError("consumer read wrong bytes"));
  }
  Say(absl::StrCat("memcpy_gbps ", memcpy_gbps, "\nread_gbps ", read_gbps,
                   "\nread_first_gbps ", read_first, "\n"));
  return 0;
}

// Holds `count` 4 KiB buffers (fds kept) until the driver closes stdin.
int Hold(const Args& a) {
  RaiseFdLimit(false);
  absl::StatusOr<Client> c = Connect(a);
  if (!c.ok()) return Fail("connect", c.status());
  std::vector<Buffer> held;
  const int64_t count = a.Int("count");
  held.reserve(count);
  while (static_cast<int64_t>(held.size()) < count) {
    const uint32_t k = static_cast<uint32_t>(
        std::min<int64_t>(64, count - static_cast<int64_t>(held.size())));
    absl::StatusOr<std::vector<Buffer>> got =
        c->Allocate(BlobDescriptor(4096, 0, "held"), k);
    if (!got.ok()) return Fail(absl::StrCat("Allocate after ", held.size()), got.status());
    for (Buffer& b : *got) held.push_back(std::move(b));
  }
  Say("ready\n");
  WaitForDriver();
  return 0;
}

// Throughput: waits for "go", then calls in a loop for `seconds`.
int Throughput(const Args& a) {
  const bool echo = a.Str("kind") == "echo";
  std::unique_ptr<halloc::bench::Echo::Stub> stub;
  std::optional<Client> client;
  if (echo) {
    stub = halloc::bench::Echo::NewStub(grpc::CreateChannel(
        "unix:" + a.Str("socket"), grpc::InsecureChannelCredentials()));
  } else {
    absl::StatusOr<Client> c = Connect(a);
    if (!c.ok()) return Fail("connect", c.status());
    client.emplace(*std::move(c));
  }
  auto once = [&](std::vector<uint64_t>& ids) -> absl::Status {
    if (echo) {
      grpc::ClientContext ctx;
      EchoResponse resp;
      grpc::Status s = stub->Echo(&ctx, EchoRequest(), &resp);
      return s.ok() ? absl::OkStatus() : absl::UnavailableError(s.error_message());
    }
    absl::StatusOr<Buffer> b = client->Allocate(BlobDescriptor(4096, 0, "tput"));
    if (!b.ok()) return b.status();
    // --no_map: diagnostics only (what mapping costs under load).
    if (!a.Has("no_map")) {
      if (absl::StatusOr<Mapping> m = b->Map(Access::kReadWrite); !m.ok()) {
        return m.status();
      }
    }
    ids.push_back(b->id());
    // Releases go in batches, as a client freeing a queue of buffers would.
    if (ids.size() == 32) {
      absl::Status s = client->Release(ids);
      ids.clear();
      return s;
    }
    return absl::OkStatus();
  };
  std::vector<uint64_t> ids;
  for (int i = 0; i < 20; ++i) {
    if (absl::Status s = once(ids); !s.ok()) return Fail("warmup", s);
  }
  Say("ready\n");
  std::string line;
  if (!ReadStdinLine(&line)) return 1;
  const int64_t end_after = static_cast<int64_t>(a.Int("ms", 1000)) * 1000000;
  const int64_t t0 = NowNs();
  int64_t count = 0, now = t0;
  while (now - t0 < end_after) {
    if (absl::Status s = once(ids); !s.ok()) return Fail("call", s);
    ++count;
    now = NowNs();
  }
  Say(absl::StrCat("count ", count, "\nelapsed_s ", (now - t0) / 1e9, "\n"));
  return 0;
}

// Diagnostics: where an Allocate's time goes, speaking the wire protocol
// directly (allocator.proto) so each step can be timed on its own: the
// Allocate RPC until its reply, taking the already-queued fd off the broker
// socket, mmap; next to a session-less Stats RPC on the same daemon.
int AllocBreakdown(const Args& a) {
  absl::StatusOr<BrokerConnection> connected =
      ConnectBroker(a.Str("broker"), absl::Seconds(10));
  if (!connected.ok()) return Fail("breakdown", connected.status());
  UniqueFd broker = std::move(connected->fd);
  const std::string token = connected->welcome.session_token();
  auto stub = v1::Allocator::NewStub(grpc::CreateChannel(
      "unix:" + a.Str("control"), grpc::InsecureChannelCredentials()));
  const uint64_t size = a.Int("size", 4096);
  Micros stats, rpc, take, map, release;
  for (int64_t i = -20; i < a.Int("n", 1000); ++i) {
    const int64_t t0 = NowNs();
    {
      grpc::ClientContext ctx;
      v1::StatsResponse resp;
      stub->Stats(&ctx, v1::StatsRequest(), &resp);
    }
    const int64_t t1 = NowNs();
    v1::AllocateRequest req;
    req.mutable_desc()->set_size(size);
    req.mutable_desc()->set_name("warm");
    v1::AllocateResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, token);
    if (a.Has("deadline")) {
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    }
    grpc::Status s = stub->Allocate(&ctx, req, &resp);
    const int64_t t2 = NowNs();
    if (!s.ok()) return Fail("Allocate", absl::UnavailableError(s.error_message()));
    absl::StatusOr<Record> rec = ReceiveRecord(broker.get(), false);
    const int64_t t3 = NowNs();
    if (!rec.ok() || rec->fds.size() != 1) return Fail("fd", rec.status());
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                     rec->fds[0].get(), 0);
    const int64_t t4 = NowNs();
    ::munmap(p, size);
    rec->fds.clear();
    const int64_t t5 = NowNs();
    v1::ReleaseRequest rel;
    rel.add_buffer_ids(resp.buffers(0).id());
    v1::ReleaseResponse rr;
    grpc::ClientContext rctx;
    rctx.AddMetadata(kSessionMetadataKey, token);
    if (a.Has("deadline")) {
      rctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    }
    stub->Release(&rctx, rel, &rr);
    const int64_t t6 = NowNs();
    absl::SleepFor(absl::Microseconds(a.Int("pace_us", 0)));
    if (i < 0) continue;
    stats.push_back(Us(t0, t1));
    rpc.push_back(Us(t1, t2));
    take.push_back(Us(t2, t3));
    map.push_back(Us(t3, t4));
    release.push_back(Us(t5, t6));
  }
  Say(FormatSummary("stats_rpc", Summarize(stats)) +
      FormatSummary("allocate_rpc", Summarize(rpc)) +
      FormatSummary("take_fd", Summarize(take)) +
      FormatSummary("mmap", Summarize(map)) +
      FormatSummary("release_rpc", Summarize(release)));
  return 0;
}

}  // namespace

int RunWorker(const std::string& name, const Args& args) {
  if (name == "echo_server") return EchoServer(args);
  if (name == "scm_server") return ScmServer(args);
  if (name == "echo_lat") return EchoLatency(args);
  if (name == "scm_lat") return ScmLatency(args);
  if (name == "memfd_floor") return MemfdFloor(args);
  if (name == "alloc_lat") return AllocLatency(args);
  if (name == "share_lat") return ShareLatency(args);
  if (name == "revoke_fanout") return RevokeFanout(args);
  if (name == "zerocopy") return ZeroCopy(args);
  if (name == "hold") return Hold(args);
  if (name == "tput") return Throughput(args);
  if (name == "alloc_breakdown") return AllocBreakdown(args);
  return -1;
}

}  // namespace halloc::bench
