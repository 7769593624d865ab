// FUZZ_CHECK: an invariant of the code under fuzz. A failure prints what
// broke and aborts, which libFuzzer reports as a crash and saves the input.
#ifndef HALLOC_TESTS_FUZZ_CHECK_H_
#define HALLOC_TESTS_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n  %s\n", __FILE__, \
                   __LINE__, #cond,                                        \
                   ::halloc::fuzz::Why(__VA_ARGS__).c_str());              \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

namespace halloc::fuzz {
inline std::string Why() { return ""; }
template <typename T>
std::string Why(const T& what) {
  return std::string(what);
}
}  // namespace halloc::fuzz

#endif  // HALLOC_TESTS_FUZZ_CHECK_H_
