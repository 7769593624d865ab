// Which side of a fork() this process is: objects that own something a
// forked child inherits but must not act on (a session's socket and its
// request ids, a DRM file's GEM handles and display) note the generation
// they were made in, and a child sees another.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_FORK_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_FORK_H_

#include <cstdint>

namespace halloc {

// How many times this process has been forked into (in a child: one more
// than in its parent at the fork). Counted by a pthread_atfork handler
// installed at the first call: call it once before any fork that matters
// (when making the object that notes it).
uint64_t ForkGeneration();

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_FORK_H_
