#include "service/util/reaper.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

// Records on which thread it was destroyed.
struct Tracked {
  Tracked(std::atomic<int>* count, std::thread::id* where)
      : count(count), where(where) {}
  ~Tracked() {
    *where = std::this_thread::get_id();
    ++*count;
  }
  std::atomic<int>* count;
  std::thread::id* where;
};

TEST(ReaperTest, DropsTheLastReferenceOnItsOwnThread) {
  Reaper reaper;
  std::atomic<int> count{0};
  std::thread::id where;
  reaper.Add(std::make_shared<Tracked>(&count, &where));
  reaper.Flush();
  EXPECT_EQ(count.load(), 1);
  EXPECT_NE(where, std::this_thread::get_id());
}

TEST(ReaperTest, AReferenceHeldElsewhereKeepsTheObject) {
  Reaper reaper;
  std::atomic<int> count{0};
  std::thread::id where;
  auto kept = std::make_shared<Tracked>(&count, &where);
  reaper.Add(kept);
  reaper.Flush();
  EXPECT_EQ(count.load(), 0);
  kept.reset();
  EXPECT_EQ(count.load(), 1);
  EXPECT_EQ(where, std::this_thread::get_id());
}

TEST(ReaperTest, DestructorDropsWhatIsStillQueued) {
  std::atomic<int> count{0};
  std::vector<std::thread::id> where(1000);
  {
    Reaper reaper;
    for (auto& w : where) reaper.Add(std::make_shared<Tracked>(&count, &w));
  }
  EXPECT_EQ(count.load(), 1000);
}

TEST(ReaperTest, ManyThreadsAddWhileItDrops) {
  std::atomic<int> count{0};
  std::vector<std::thread::id> where(4 * 500);
  Reaper reaper;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        reaper.Add(std::make_shared<Tracked>(&count, &where[t * 500 + i]));
      }
    });
  }
  for (auto& t : threads) t.join();
  reaper.Flush();
  EXPECT_EQ(count.load(), 4 * 500);
}

}  // namespace
}  // namespace halloc
