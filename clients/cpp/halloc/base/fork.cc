#include "clients/cpp/halloc/base/fork.h"

#include <pthread.h>

#include <atomic>

namespace halloc {
namespace {

std::atomic<uint64_t> fork_generation{0};

}  // namespace

uint64_t ForkGeneration() {
  static const bool counting = [] {
    return ::pthread_atfork(nullptr, nullptr,
                            [] { fork_generation.fetch_add(1, std::memory_order_relaxed); }) == 0;
  }();
  (void)counting;
  return fork_generation.load(std::memory_order_relaxed);
}

}  // namespace halloc
