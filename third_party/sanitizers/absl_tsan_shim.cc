// Tells ThreadSanitizer about Debian's absl::Mutex and absl::CondVar, which
// are not built with -fsanitize=thread: preloaded (LD_PRELOAD) into the
// TSan-built tests by `tools/run sanitizers tsan`, it interposes their
// exported entry points and marks each lock as an acquire and each unlock
// as a release on the mutex's address (__tsan_acquire/__tsan_release). So
// two project threads that meet in an absl::Mutex are ordered for TSan, as
// they are in fact, and a race it still reports is one the project owns.
//
// The symbols are Debian 12's Abseil (LTS 20220623, inline namespace
// "debian3"); a build of another Abseil needs them renamed. Without TSan
// the hooks are null and the shim only forwards.
#include <dlfcn.h>

#include <cstdint>

extern "C" void __tsan_acquire(void* addr) __attribute__((weak));
extern "C" void __tsan_release(void* addr) __attribute__((weak));

namespace {

void Acquire(void* m) {
  if (__tsan_acquire != nullptr) __tsan_acquire(m);
}
void Release(void* m) {
  if (__tsan_release != nullptr) __tsan_release(m);
}

// By-value absl::Duration and absl::Time: {int64, uint32}, trivially copyable.
struct Duration {
  int64_t hi;
  uint32_t lo;
};
// absl::Time is one Duration (its offset from the epoch): the same layout.
using Time = Duration;
struct Condition;

// The next definition of `name` (the real one in libabsl_synchronization).
template <typename Fn>
Fn Real(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

}  // namespace

#define HALLOC_FORWARD(ret, sym, params)                       \
  using sym##_fn = ret(*) params;                              \
  static sym##_fn real_##sym() {                               \
    static const sym##_fn fn = Real<sym##_fn>(#sym);           \
    return fn;                                                 \
  }

extern "C" {

// Mutex::Lock / ReaderLock / TryLock / ReaderTryLock: acquire after.
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex4LockEv, (void*))
void _ZN4absl7debian35Mutex4LockEv(void* m) {
  real__ZN4absl7debian35Mutex4LockEv()(m);
  Acquire(m);
}
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex10ReaderLockEv, (void*))
void _ZN4absl7debian35Mutex10ReaderLockEv(void* m) {
  real__ZN4absl7debian35Mutex10ReaderLockEv()(m);
  Acquire(m);
}
HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex7TryLockEv, (void*))
bool _ZN4absl7debian35Mutex7TryLockEv(void* m) {
  const bool got = real__ZN4absl7debian35Mutex7TryLockEv()(m);
  if (got) Acquire(m);
  return got;
}
HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex13ReaderTryLockEv, (void*))
bool _ZN4absl7debian35Mutex13ReaderTryLockEv(void* m) {
  const bool got = real__ZN4absl7debian35Mutex13ReaderTryLockEv()(m);
  if (got) Acquire(m);
  return got;
}

// Mutex::Unlock / ReaderUnlock: release before.
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex6UnlockEv, (void*))
void _ZN4absl7debian35Mutex6UnlockEv(void* m) {
  Release(m);
  real__ZN4absl7debian35Mutex6UnlockEv()(m);
}
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, (void*))
void _ZN4absl7debian35Mutex12ReaderUnlockEv(void* m) {
  Release(m);
  real__ZN4absl7debian35Mutex12ReaderUnlockEv()(m);
}

// Mutex::LockWhen / ReaderLockWhen: acquire after.
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE,
               (void*, const Condition&))
void _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(void* m, const Condition& c) {
  real__ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE()(m, c);
  Acquire(m);
}
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE,
               (void*, const Condition&))
void _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE(void* m, const Condition& c) {
  real__ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE()(m, c);
  Acquire(m);
}

// Mutex::Await*: the mutex is released while waiting and held again after.
HALLOC_FORWARD(void, _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE,
               (void*, const Condition&))
void _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(void* m, const Condition& c) {
  Release(m);
  real__ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE()(m, c);
  Acquire(m);
}
HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE,
               (void*, const Condition&, Duration))
bool _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE(
    void* m, const Condition& c, Duration d) {
  Release(m);
  const bool r =
      real__ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE()(m, c, d);
  Acquire(m);
  return r;
}

HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE,
               (void*, const Condition&, Time))
bool _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE(void* m,
                                                                           const Condition& c,
                                                                           Time t) {
  Release(m);
  const bool r =
      real__ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE()(m, c, t);
  Acquire(m);
  return r;
}

// Mutex::LockWhenWith{Timeout,Deadline}: held after, whatever they return.
HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
               (void*, const Condition&, Duration))
bool _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE(void* m,
                                                                                 const Condition& c,
                                                                                 Duration d) {
  const bool r =
      real__ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE()(m, c, d);
  Acquire(m);
  return r;
}
HALLOC_FORWARD(bool, _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
               (void*, const Condition&, Time))
bool _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(void* m,
                                                                              const Condition& c,
                                                                              Time t) {
  const bool r =
      real__ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE()(m, c, t);
  Acquire(m);
  return r;
}

// CondVar::Wait*: releases `m` while waiting, holds it again after.
HALLOC_FORWARD(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, (void*, void*))
void _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(void* cv, void* m) {
  Release(m);
  real__ZN4absl7debian37CondVar4WaitEPNS0_5MutexE()(cv, m);
  Acquire(m);
}
HALLOC_FORWARD(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE,
               (void*, void*, Duration))
bool _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE(void* cv, void* m,
                                                                         Duration d) {
  Release(m);
  const bool r =
      real__ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE()(cv, m, d);
  Acquire(m);
  return r;
}

HALLOC_FORWARD(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE,
               (void*, void*, Time))
bool _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(void* cv, void* m, Time t) {
  Release(m);
  const bool r = real__ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE()(cv, m, t);
  Acquire(m);
  return r;
}

}  // extern "C"
