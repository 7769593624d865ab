#include "service/util/cpu_follower.h"

#include <utility>

namespace halloc {

std::atomic<int>& ServingCpu() {
  static std::atomic<int> cpu{-1};
  return cpu;
}

CpuFollower CpuFollower::ForThisThread() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
    CPU_ZERO(&allowed);  // unknown: never moves the thread
  }
  return CpuFollower(allowed, [](const cpu_set_t& set) {
    return ::sched_setaffinity(0, sizeof(set), &set);
  });
}

CpuFollower::CpuFollower(const cpu_set_t& allowed, SetAffinity set_affinity)
    : allowed_(allowed),
      allowed_count_(CPU_COUNT(&allowed)),
      set_affinity_(std::move(set_affinity)) {}

int CpuFollower::Allowed(uint32_t cpu_hint) const {
  if (cpu_hint == 0 || cpu_hint > CPU_SETSIZE || allowed_count_ < 2) return -1;
  const int cpu = static_cast<int>(cpu_hint - 1);
  return CPU_ISSET(cpu, &allowed_) ? cpu : -1;
}

void CpuFollower::Follow(uint32_t cpu_hint, bool alone) {
  if (!alone) {
    LetGo();
    return;
  }
  const int cpu = Allowed(cpu_hint);
  if (cpu < 0 || cpu == held_) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (set_affinity_(one) == 0) {
    held_ = cpu;
    avoided_ = -1;
  }
}

void CpuFollower::Avoid(uint32_t cpu_hint) {
  const int cpu = Allowed(cpu_hint);
  if (cpu < 0) {
    LetGo();
    return;
  }
  if (cpu == avoided_) return;
  cpu_set_t others = allowed_;
  CPU_CLR(cpu, &others);
  if (set_affinity_(others) == 0) {
    avoided_ = cpu;
    held_ = -1;
  }
}

void CpuFollower::LetGo() {
  if (held_ < 0 && avoided_ < 0) return;
  // Should this fail, the thread stays where it is; the next call tries again.
  if (set_affinity_(allowed_) == 0) held_ = avoided_ = -1;
}

}  // namespace halloc
