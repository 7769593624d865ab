#include "service/util/last_reference_poll.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace halloc {
namespace {

using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

int OpenFds() {
  return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                        std::filesystem::directory_iterator()));
}

// The answers IsLast gives, per inode (a test's stand-in for the kernel's
// count of references), and how often each was asked.
class Answers {
 public:
  void Set(ino_t ino, int answer) {
    absl::MutexLock lock(&mu_);
    answer_[ino] = answer;
  }
  int Ask(int fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return -errno;
    absl::MutexLock lock(&mu_);
    ++asked_[st.st_ino];
    when_[st.st_ino].push_back(absl::Now());
    auto it = answer_.find(st.st_ino);
    return it == answer_.end() ? 1 : it->second;
  }
  int Asked(ino_t ino) {
    absl::MutexLock lock(&mu_);
    return asked_[ino];
  }
  std::vector<absl::Time> When(ino_t ino) {
    absl::MutexLock lock(&mu_);
    return when_[ino];
  }
  LastReferencePoll::IsLast Fn() {
    return [this](int fd) { return Ask(fd); };
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<ino_t, int> answer_;
  absl::flat_hash_map<ino_t, int> asked_;
  absl::flat_hash_map<ino_t, std::vector<absl::Time>> when_;
};

// A memfd and its inode.
std::pair<UniqueFd, ino_t> Memory() {
  UniqueFd fd(::memfd_create("last_reference_poll_test", MFD_CLOEXEC));
  struct stat st {};
  ::fstat(fd.get(), &st);
  return {std::move(fd), st.st_ino};
}

// TakeGone until `token` shows up or `within` passes.
bool GoneWithin(LastReferencePoll& poll, uint64_t token, absl::Duration within) {
  const absl::Time end = absl::Now() + within;
  while (absl::Now() < end) {
    for (uint64_t t : poll.TakeGone()) {
      if (t == token) return true;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

TEST(LastReferencePollTest, TheLastReferenceIsGoneAtFollowAndItsFdClosed) {
  Answers answers;
  LastReferencePoll poll(answers.Fn());
  auto [fd, ino] = Memory();
  const int before = OpenFds();
  poll.Follow(std::move(fd), 7, 1);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(7u));
  EXPECT_EQ(poll.following(), 0u);
  EXPECT_EQ(OpenFds(), before - 1) << "its fd is not kept";
  EXPECT_EQ(answers.Asked(ino), 1);
}

TEST(LastReferencePollTest, MemoryHeldElsewhereIsKeptUntilARefreshOfItsGroupSeesItGo) {
  Answers answers;
  LastReferencePoll poll(answers.Fn(), /*on_a_thread=*/false);
  auto [a, a_ino] = Memory();
  auto [b, b_ino] = Memory();
  answers.Set(a_ino, 0);
  answers.Set(b_ino, 0);
  poll.Follow(std::move(a), 1, /*group=*/10);
  poll.Follow(std::move(b), 2, /*group=*/20);
  EXPECT_THAT(poll.TakeGone(), IsEmpty());
  EXPECT_EQ(poll.following(), 2u);
  answers.Set(a_ino, 1);
  answers.Set(b_ino, 1);
  poll.Refresh(10);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(1u));
  EXPECT_EQ(answers.Asked(b_ino), 1) << "group 20 is not group 10's business";
  poll.Refresh(std::nullopt);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(2u));
  EXPECT_EQ(poll.following(), 0u);
  EXPECT_EQ(poll.unwatched(), 0u);
}

TEST(LastReferencePollTest, ARefreshAsksABoundedNumberOldestFirst) {
  Answers answers;
  LastReferencePoll poll(answers.Fn(), /*on_a_thread=*/false);
  const size_t n = LastReferencePoll::kMaxRefresh + 10;
  std::vector<ino_t> inos;
  for (size_t i = 0; i < n; ++i) {
    auto [fd, ino] = Memory();
    answers.Set(ino, 0);
    inos.push_back(ino);
    poll.Follow(std::move(fd), i, 1);
  }
  poll.Refresh(1);
  size_t asked_twice = 0;
  for (ino_t ino : inos) asked_twice += answers.Asked(ino) == 2;
  EXPECT_EQ(asked_twice, LastReferencePoll::kMaxRefresh);
  // The next refresh starts with the ten left out.
  poll.Refresh(1);
  size_t never_twice = 0;
  for (ino_t ino : inos) never_twice += answers.Asked(ino) < 2;
  EXPECT_EQ(never_twice, 0u) << "the ten left out came first";

  // One just released (asked once, at Follow) and gone since: among more
  // than kMaxRefresh others, the next refresh asks about it.
  auto [fresh, fresh_ino] = Memory();
  answers.Set(fresh_ino, 0);
  poll.Follow(std::move(fresh), 9999, 1);
  answers.Set(fresh_ino, 1);
  poll.Refresh(1);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(9999u));
}

// Refusals in a stream: memory already asked about since its Follow is
// asked again within a budget per group and window, whatever the number of
// refusals; what was only asked at its Follow is asked at the next refresh
// regardless.
TEST(LastReferencePollTest, RefreshesInAStreamAskWithinABudgetPerWindow) {
  Answers answers;
  absl::Time now = absl::UnixEpoch() + absl::Hours(1);
  LastReferencePoll poll(answers.Fn(), /*on_a_thread=*/false, [&now] { return now; });
  auto followed = [&](uint64_t group, size_t n) {
    std::vector<ino_t> inos;
    for (size_t i = 0; i < n; ++i) {
      auto [fd, ino] = Memory();
      answers.Set(ino, 0);
      inos.push_back(ino);
      poll.Follow(std::move(fd), group * 1000 + i, group);
    }
    return inos;
  };
  auto total = [&](const std::vector<ino_t>& inos) {
    int asked = 0;
    for (ino_t ino : inos) asked += answers.Asked(ino);
    return asked;
  };
  const std::vector<ino_t> one = followed(1, 2 * LastReferencePoll::kMaxRefresh);
  const std::vector<ino_t> two = followed(2, LastReferencePoll::kMaxRefresh);
  poll.Refresh(2);  // all of group 2 asked again: its budget's from now on
  const int at_follow = total(one);
  poll.Refresh(1);
  poll.Refresh(1);  // the second half, still asked only at Follow
  EXPECT_EQ(total(one), at_follow + 2 * int(LastReferencePoll::kMaxRefresh));
  now += LastReferencePoll::kRefreshWindow;
  poll.Refresh(1);
  const int first = total(one);
  EXPECT_EQ(first, at_follow + 3 * int(LastReferencePoll::kMaxRefresh));
  for (int i = 0; i < 50; ++i) poll.Refresh(1);
  EXPECT_EQ(total(one), first) << "the window's budget was spent";
  // Just released among them: asked at once all the same.
  auto [fresh, fresh_ino] = Memory();
  answers.Set(fresh_ino, 0);
  poll.Follow(std::move(fresh), 9999, 1);
  answers.Set(fresh_ino, 1);
  poll.Refresh(1);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(9999u));
  EXPECT_EQ(total(one), first);
  // Another group's budget is its own.
  const int two_before = total(two);
  poll.Refresh(2);
  EXPECT_EQ(total(two), two_before + int(LastReferencePoll::kMaxRefresh));
  // The next window asks again.
  now += LastReferencePoll::kRefreshWindow;
  poll.Refresh(1);
  EXPECT_EQ(total(one), first + int(LastReferencePoll::kMaxRefresh));
}

// A refresh that takes all of a group out leaves it empty while it asks;
// another Ask finishing then (a release of anyone's, the thread's pass)
// must not give the group a fresh budget.
TEST(LastReferencePollTest, ABudgetOutlivesItsGroupBeingEmptyWhileAsked) {
  Answers answers;
  absl::Time now = absl::UnixEpoch() + absl::Hours(1);
  LastReferencePoll* self = nullptr;
  bool meddle = false;
  uint64_t token = 100;
  int asked_one = 0;
  LastReferencePoll poll(
      [&](int fd) {
        if (meddle) {  // another release, already gone, during the refresh
          meddle = false;
          self->Follow(Memory().first, ++token, /*group=*/2);
          meddle = true;
        }
        ++asked_one;
        return answers.Ask(fd);
      },
      /*on_a_thread=*/false, [&now] { return now; });
  self = &poll;
  const size_t n = LastReferencePoll::kMaxRefresh - 56;  // all out in one refresh
  for (size_t i = 0; i < n; ++i) {
    auto [fd, ino] = Memory();
    answers.Set(ino, 0);
    poll.Follow(std::move(fd), i, 1);
  }
  poll.Refresh(1);  // past the asks of Follow: the budget's from now on
  now += LastReferencePoll::kRefreshWindow;
  asked_one = 0;
  meddle = true;
  for (int i = 0; i < 10; ++i) poll.Refresh(1);
  meddle = false;
  // Each refresh's meddling Follow was asked once too (and found gone).
  EXPECT_EQ(asked_one - int(token - 100), int(LastReferencePoll::kMaxRefresh))
      << "one window's budget, not one per refresh";
  EXPECT_EQ(poll.following(), n);
}

// A refresh for anyone (hallocd full) takes, across groups, what was asked
// about longest ago first.
TEST(LastReferencePollTest, ARefreshForAnyoneTakesTheOldestAcrossGroups) {
  Answers answers;
  LastReferencePoll poll(answers.Fn(), /*on_a_thread=*/false);
  const size_t per_group = LastReferencePoll::kMaxRefresh / 2 + 50;
  std::vector<ino_t> first, second;  // in the order they were followed
  for (uint64_t group : {1, 2}) {
    for (size_t i = 0; i < per_group; ++i) {
      auto [fd, ino] = Memory();
      answers.Set(ino, 0);
      (group == 1 ? first : second).push_back(ino);
      poll.Follow(std::move(fd), group * 1000 + i, group);
    }
  }
  poll.Refresh(std::nullopt);
  for (ino_t ino : first) EXPECT_EQ(answers.Asked(ino), 2) << "group 1 was followed first";
  const size_t rest = LastReferencePoll::kMaxRefresh - per_group;
  for (size_t i = 0; i < second.size(); ++i) {
    EXPECT_EQ(answers.Asked(second[i]), i < rest ? 2 : 1) << "group 2's #" << i;
  }
  EXPECT_EQ(poll.following(), 2 * per_group);
}

TEST(LastReferencePollTest, APassingErrorKeepsTheMemoryAndAsksAgain) {
  Answers answers;
  LastReferencePoll poll(answers.Fn(), /*on_a_thread=*/false);
  auto [fd, ino] = Memory();
  answers.Set(ino, -EMFILE);  // hallocd out of fds for a moment
  poll.Follow(std::move(fd), 6);
  EXPECT_THAT(poll.TakeGone(), IsEmpty()) << "no answer is not a yes";
  EXPECT_EQ(poll.unwatched(), 0u);
  answers.Set(ino, 1);
  poll.Refresh(std::nullopt);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(6u));
}

TEST(LastReferencePollTest, ItAsksLessOftenTheLongerMemoryIsKept) {
  Answers answers;
  LastReferencePoll poll(answers.Fn());
  auto [fd, ino] = Memory();
  answers.Set(ino, 0);
  poll.Follow(std::move(fd), 3);
  absl::SleepFor(absl::Milliseconds(1600));
  // At Follow, then after 100, 200, 400 and 800 ms, each pass at least
  // 250 ms after the last: five at most in 1.6 s, where a fixed 100 ms
  // would ask 16 times. A loaded machine stretches the passes' gaps, but
  // may delay one ask after its pass began and so shorten the gap to the
  // next: only the interval after two answers (200 ms) is sure.
  const std::vector<absl::Time> when = answers.When(ino);
  EXPECT_LE(when.size(), 5u);
  for (size_t i = 2; i < when.size(); ++i) {
    EXPECT_GE(when[i] - when[i - 1], absl::Milliseconds(200)) << "ask " << i;
  }
  answers.Set(ino, 1);
  EXPECT_TRUE(GoneWithin(poll, 3, absl::Seconds(5)));
}

TEST(LastReferencePollTest, WhatCannotBeToldIsReportedGoneAndCounted) {
  Answers answers;
  LastReferencePoll poll(answers.Fn());
  auto [fd, ino] = Memory();
  answers.Set(ino, -ENOTSUP);
  poll.Follow(std::move(fd), 4);
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(4u));
  EXPECT_EQ(poll.unwatched(), 1u);
  poll.Follow(UniqueFd(), 5);  // no fd at all
  EXPECT_THAT(poll.TakeGone(), UnorderedElementsAre(5u));
  EXPECT_EQ(poll.unwatched(), 2u);
}

TEST(LastReferencePollTest, DestroyingItClosesWhatItKept) {
  Answers answers;
  const int before = OpenFds();
  {
    LastReferencePoll poll(answers.Fn());
    for (uint64_t t = 0; t < 8; ++t) {
      auto [fd, ino] = Memory();
      answers.Set(ino, 0);
      poll.Follow(std::move(fd), t);
    }
    EXPECT_EQ(poll.following(), 8u);
    EXPECT_EQ(OpenFds(), before + 8);
  }
  EXPECT_EQ(OpenFds(), before);
}

}  // namespace
}  // namespace halloc
