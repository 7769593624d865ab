#include "service/util/work_queue.h"

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

TEST(WorkQueueTest, RunsTasksInOrderOnItsOwnThread) {
  WorkQueue q(8, 8);
  absl::Mutex mu;
  std::vector<int> order;
  std::thread::id ran_on;
  absl::Notification done;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(q.Post(1, [&, i] {
                   absl::MutexLock lock(&mu);
                   order.push_back(i);
                   ran_on = std::this_thread::get_id();
                   if (i == 4) done.Notify();
                 }).ok());
  }
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

// Across keys, turns: the key served least recently goes next, so one
// key's waiting tasks (each maybe seconds of work: a revoke of many views)
// hold another key's back by at most one. They ran in posting order: all
// of key 1's first.
TEST(WorkQueueTest, KeysTakeTurns) {
  WorkQueue q(16, 8);
  absl::Notification release, started, done;
  absl::Mutex mu;
  std::vector<int> order;
  auto note = [&](int what) {
    return [&, what] {
      absl::MutexLock lock(&mu);
      order.push_back(what);
      if (what == 23) done.Notify();
    };
  };
  ASSERT_TRUE(q.Post(1, [&] {
                 started.Notify();
                 release.WaitForNotification();
               }).ok());
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Key 1 (served just now) has three waiting; then key 2, then key 3
  // (neither served yet) post theirs.
  for (int i : {11, 12, 13}) ASSERT_TRUE(q.Post(1, note(i)).ok());
  for (int i : {21, 22, 23}) ASSERT_TRUE(q.Post(2, note(i)).ok());
  ASSERT_TRUE(q.Post(3, note(31)).ok());
  release.Notify();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<int>{11, 21, 31, 12, 22, 13, 23}));
}

// A key that posts again as soon as its task ran (a client's loop of slow
// requests, each asked once the last was answered) does not go ahead of
// one waiting since: a first version took such a key for one never served,
// and two of them kept a third waiting for good.
TEST(WorkQueueTest, AKeyThatComesBackWaitsItsTurn) {
  std::atomic<uint64_t> just_ran{0};
  std::atomic<bool> stop{false};
  std::atomic<int> others{0};
  std::function<void(uint64_t)> post;
  // Each of keys 2 and 3 posts its next task once the last has run and
  // its place is free (after_each): it has none counted meanwhile.
  WorkQueue q(16, 8, [&] {
    const uint64_t key = just_ran.exchange(0);
    if (key != 0 && !stop) post(key);
  });
  post = [&](uint64_t key) {
    (void)q.Post(key, [&, key] {
      ++others;
      absl::SleepFor(absl::Milliseconds(1));
      just_ran = key;
    });
  };
  absl::Notification first_a, a_done;
  ASSERT_TRUE(q.Post(1, [&] { first_a.WaitForNotification(); }).ok());  // key 1 served once
  ASSERT_TRUE(q.Post(1, [&] { a_done.Notify(); }).ok());                // and waiting
  post(2);
  post(3);
  first_a.Notify();
  EXPECT_TRUE(a_done.WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "key 1 waited while the others ran " << others << " tasks";
  stop = true;
}

// One key cannot fill the queue for the others, nor anyone past the total;
// a key's share frees once its tasks have run.
TEST(WorkQueueTest, BoundsPerKeyAndInAll) {
  WorkQueue q(/*max_queued=*/3, /*max_per_key=*/2);
  absl::Notification release, started;
  ASSERT_TRUE(q.Post(1, [&] {
                 started.Notify();
                 release.WaitForNotification();
               }).ok());
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Key 1 has one running: one more may wait.
  ASSERT_TRUE(q.Post(1, [] {}).ok());
  absl::Status s = q.Post(1, [] {});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("of this uid"), std::string::npos) << s;
  ASSERT_TRUE(q.Post(2, [] {}).ok());
  ASSERT_TRUE(q.Post(3, [] {}).ok());
  s = q.Post(4, [] {});  // three wait
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("wait already"), std::string::npos) << s;
  release.Notify();
  absl::Notification after;
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (!q.Post(1, [&] { after.Notify(); }).ok()) {
    ASSERT_LT(absl::Now(), until);
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(after.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

// Destroyed: what waits is dropped unrun (its captures released), the
// running task finishes.
TEST(WorkQueueTest, DestroyingDropsWhatWaits) {
  auto q = std::make_unique<WorkQueue>(8, 8);
  absl::Notification started, release;
  std::atomic<bool> finished{false}, ran_queued{false};
  auto capture = std::make_shared<int>(0);
  ASSERT_TRUE(q->Post(1, [&] {
                 started.Notify();
                 release.WaitForNotification();
                 finished = true;
               }).ok());
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(q->Post(1, [&, capture] { ran_queued = true; }).ok());
  EXPECT_EQ(capture.use_count(), 2);
  WorkQueue* raw = q.get();
  std::thread destroy([&] { q.reset(); });
  // Until the destructor has taken the queue (Post says it is shutting
  // down), the running task holds it up; only then may the task end.
  while (!absl::IsUnavailable(raw->Post(2, [] {}))) absl::SleepFor(absl::Milliseconds(1));
  release.Notify();
  destroy.join();
  EXPECT_TRUE(finished);
  EXPECT_FALSE(ran_queued);
  EXPECT_EQ(capture.use_count(), 1);
}

// What runs after each task finds the task's place free already: a caller
// told "one ended" can post at once (before, the broker's held requests
// woke to a queue still counting the task and waited for the next).
TEST(WorkQueueTest, AfterEachRunsOnceTheTasksPlaceIsFree) {
  WorkQueue* self = nullptr;
  absl::Notification done;
  std::atomic<bool> room{false};
  WorkQueue q(8, 1, [&] {
    room = self->HasRoom(7);
    done.Notify();
  });
  self = &q;
  ASSERT_TRUE(q.Post(7, [] {}).ok());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(room.load());
}

}  // namespace
}  // namespace halloc
