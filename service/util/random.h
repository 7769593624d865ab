// Secrets: session tokens and handshake challenges.
#ifndef HALLOC_SERVICE_UTIL_RANDOM_H_
#define HALLOC_SERVICE_UTIL_RANDOM_H_

#include <cstddef>
#include <string>

namespace halloc {

// `n` bytes from getrandom(2). getrandom on a booted system does not fail
// for small requests; if it ever does, the process aborts rather than mint
// a guessable secret.
std::string RandomBytes(size_t n);

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_RANDOM_H_
