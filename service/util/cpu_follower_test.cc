#include "service/util/cpu_follower.h"

#include <sched.h>

#include <climits>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace halloc {
namespace {

cpu_set_t Set(std::initializer_list<int> cpus) {
  cpu_set_t s;
  CPU_ZERO(&s);
  for (int c : cpus) CPU_SET(c, &s);
  return s;
}

bool Same(const cpu_set_t& a, const cpu_set_t& b) { return CPU_EQUAL(&a, &b); }

// Records every CPU set the follower asks for.
struct FakeAffinity {
  std::vector<cpu_set_t> calls;
  int result = 0;
  CpuFollower::SetAffinity fn() {
    return [this](const cpu_set_t& s) {
      calls.push_back(s);
      return result;
    };
  }
};

TEST(CpuFollowerTest, MovesToTheClientsCpuOnce) {
  FakeAffinity fake;
  CpuFollower f(Set({0, 1, 2, 3}), fake.fn());
  f.Follow(/*cpu 2*/ 3, /*alone=*/true);
  ASSERT_EQ(fake.calls.size(), 1u);
  EXPECT_TRUE(Same(fake.calls[0], Set({2})));
  EXPECT_EQ(f.held(), 2);
  f.Follow(3, true);  // already there: no syscall
  EXPECT_EQ(fake.calls.size(), 1u);
  f.Follow(1, true);  // the client moved to cpu 0
  ASSERT_EQ(fake.calls.size(), 2u);
  EXPECT_TRUE(Same(fake.calls[1], Set({0})));
  EXPECT_EQ(f.held(), 0);
}

TEST(CpuFollowerTest, IgnoresUnknownAndForeignCpus) {
  FakeAffinity fake;
  CpuFollower f(Set({0, 1}), fake.fn());
  f.Follow(0, true);  // unknown
  f.Follow(3, true);  // cpu 2: not ours
  f.Follow(CPU_SETSIZE + 1, true);
  f.Follow(UINT32_MAX, true);
  EXPECT_TRUE(fake.calls.empty());
  EXPECT_EQ(f.held(), -1);
}

TEST(CpuFollowerTest, LetsGoWhenSeveralClientsAreServed) {
  FakeAffinity fake;
  const cpu_set_t all = Set({0, 1, 5});
  CpuFollower f(all, fake.fn());
  f.Follow(2, true);
  ASSERT_EQ(f.held(), 1);
  f.Follow(2, /*alone=*/false);
  ASSERT_EQ(fake.calls.size(), 2u);
  EXPECT_TRUE(Same(fake.calls[1], all));  // its whole set back
  EXPECT_EQ(f.held(), -1);
  f.LetGo();  // not held: nothing to do
  EXPECT_EQ(fake.calls.size(), 2u);
}

TEST(CpuFollowerTest, OneCpuLeavesNothingToFollow) {
  FakeAffinity fake;
  CpuFollower f(Set({3}), fake.fn());
  f.Follow(4, true);
  EXPECT_TRUE(fake.calls.empty());
}

TEST(CpuFollowerTest, AFailedMoveHoldsNothing) {
  FakeAffinity fake;
  fake.result = -1;
  CpuFollower f(Set({0, 1}), fake.fn());
  f.Follow(2, true);
  EXPECT_EQ(f.held(), -1);
  f.LetGo();
  EXPECT_EQ(fake.calls.size(), 1u);  // no LetGo for a move that failed
}

TEST(CpuFollowerTest, AvoidsTheServedCpu) {
  FakeAffinity fake;
  const cpu_set_t all = Set({0, 1, 5});
  CpuFollower f(all, fake.fn());
  f.Avoid(/*cpu 1*/ 2);
  ASSERT_EQ(fake.calls.size(), 1u);
  EXPECT_TRUE(Same(fake.calls[0], Set({0, 5})));
  EXPECT_EQ(f.avoided(), 1);
  f.Avoid(2);  // already off it: no syscall
  EXPECT_EQ(fake.calls.size(), 1u);
  f.Avoid(6);  // the client moved to cpu 5
  ASSERT_EQ(fake.calls.size(), 2u);
  EXPECT_TRUE(Same(fake.calls[1], Set({0, 1})));
  EXPECT_EQ(f.avoided(), 5);
  f.Follow(1, true);  // held on cpu 0: avoids nothing any more
  EXPECT_EQ(f.held(), 0);
  EXPECT_EQ(f.avoided(), -1);
  f.Avoid(1);
  EXPECT_EQ(f.held(), -1);
  EXPECT_EQ(f.avoided(), 0);
  f.LetGo();
  ASSERT_EQ(fake.calls.size(), 5u);
  EXPECT_TRUE(Same(fake.calls[4], all));
  EXPECT_EQ(f.avoided(), -1);
}

TEST(CpuFollowerTest, AvoidLetsGoForUnknownOrForeignCpus) {
  FakeAffinity fake;
  const cpu_set_t all = Set({0, 1});
  CpuFollower f(all, fake.fn());
  f.Avoid(1);
  ASSERT_EQ(f.avoided(), 0);
  for (uint32_t hint : {0u, 3u, static_cast<uint32_t>(CPU_SETSIZE) + 1, UINT32_MAX}) {
    SCOPED_TRACE(hint);
    f.Avoid(1);
    f.Avoid(hint);  // nothing known to avoid: the whole set back
    EXPECT_EQ(f.avoided(), -1);
    EXPECT_TRUE(Same(fake.calls.back(), all));
  }
  // One CPU: it cannot be avoided, nothing is called.
  FakeAffinity one;
  CpuFollower g(Set({3}), one.fn());
  g.Avoid(4);
  EXPECT_TRUE(one.calls.empty());
  EXPECT_EQ(g.avoided(), -1);
}

// The real thing: the calling thread runs on each CPU it is sent to, and
// gets its whole set back.
TEST(CpuFollowerTest, MovesThisThreadForReal) {
  cpu_set_t before;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(before), &before), 0);
  if (CPU_COUNT(&before) < 2) {
    GTEST_SKIP() << "this process may run on one CPU only: nothing to move between";
  }
  std::thread([&] {
    CpuFollower f = CpuFollower::ForThisThread();
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &before)) continue;
      f.Follow(static_cast<uint32_t>(cpu) + 1, true);
      EXPECT_EQ(f.held(), cpu);
      EXPECT_EQ(::sched_getcpu(), cpu);
      cpu_set_t now;
      ASSERT_EQ(::sched_getaffinity(0, sizeof(now), &now), 0);
      EXPECT_EQ(CPU_COUNT(&now), 1);
    }
    f.LetGo();
    cpu_set_t after;
    ASSERT_EQ(::sched_getaffinity(0, sizeof(after), &after), 0);
    EXPECT_TRUE(Same(after, before));
  }).join();
}

}  // namespace
}  // namespace halloc
