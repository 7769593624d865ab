// CpuFollower: keeps a server thread on the CPU of the one client it is
// serving (Follow), or background work off that CPU (Avoid).
//
// A request/reply pair costs least when both threads take turns on one CPU:
// the reply's wake-up (a sync wake-up) hands that CPU straight to the client.
// The scheduler keeps such a pair together, but also keeps a pair apart once
// something (another thread of the daemon, a load balance) has split it: a
// wakee goes back to its previous CPU whenever that CPU is idle. Split, every
// request and every reply must wake a sleeping CPU, which on a VM costs tens
// of microseconds each (measured on this project's 2-vCPU machine: one
// Unix-socket round trip carrying an fd, 13 µs on one CPU, 53 µs across two).
//
// The client says which CPU it sent from (BrokerRequest.cpu); the follower
// moves the serving thread there before the reply goes out, the way RFS
// steers a flow's packets to the CPU of the thread that reads them. It does
// so only while one client at a time is being served: when several are, it
// lets the thread run anywhere in its CPU set again, so one client cannot
// hold the thread on its CPU while others wait. A hint outside the thread's
// own CPU set (hallocd's cpuset, systemd's CPUAffinity=) is ignored, so any
// value a client sends is harmless.
//
// Not thread-safe: used by the one thread it moves.
#ifndef HALLOC_SERVICE_UTIL_CPU_FOLLOWER_H_
#define HALLOC_SERVICE_UTIL_CPU_FOLLOWER_H_

#include <sched.h>

#include <atomic>
#include <cstdint>
#include <functional>

namespace halloc {

class CpuFollower {
 public:
  // Sets the calling thread's CPU set; 0 or -1 (errno), like
  // sched_setaffinity. Tests pass their own.
  using SetAffinity = std::function<int(const cpu_set_t&)>;

  // For the calling thread: the CPUs it may use now are the ones it may be
  // moved among.
  static CpuFollower ForThisThread();
  CpuFollower(const cpu_set_t& allowed, SetAffinity set_affinity);

  // A request from a client on CPU `cpu_hint` - 1 (0: unknown). `alone`:
  // the only client being served now (else the thread is let go).
  void Follow(uint32_t cpu_hint, bool alone);
  // The opposite, for background work while a lone client is served on CPU
  // `cpu_hint` - 1: keeps the thread on the other CPUs of its set (let go
  // when the hint is unknown, foreign, or the set has no other CPU).
  void Avoid(uint32_t cpu_hint);
  // Lets the thread run on any CPU of its set again.
  void LetGo();

  // The CPU the thread is held on, or -1.
  int held() const { return held_; }
  // The CPU the thread is kept off, or -1.
  int avoided() const { return avoided_; }

 private:
  // The allowed CPU `cpu_hint` - 1, or -1 (unknown, foreign or out of range).
  int Allowed(uint32_t cpu_hint) const;

  cpu_set_t allowed_;
  int allowed_count_;
  SetAffinity set_affinity_;
  int held_ = -1;     // the set is {held_}
  int avoided_ = -1;  // the set is allowed_ without avoided_
};

// The CPU hallocd serves a lone client from right now, or -1 (none, or
// several clients at once). The broker publishes it; background work (the
// pool's refills, PoolOptions::serving_cpu) avoids it: on that CPU the
// client and the broker thread take turns and leave it no idle time, so
// work there would either starve or sit in the client's way.
std::atomic<int>& ServingCpu();

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_CPU_FOLLOWER_H_
