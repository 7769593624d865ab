// protocol_test's probe: where libhalloc would look for hallocd's sockets
// in this process (AT_SECURE or not), one "key=value" per line.
#include <sys/auxv.h>

#include <cstdio>
#include <cstdlib>

#include "clients/cpp/halloc/base/protocol.h"

int main() {
  std::printf("secure=%lu\nbroker=%s\ndir=%s\n", ::getauxval(AT_SECURE),
              halloc::NamedSocketPath("", halloc::kBrokerSocketEnv).c_str(),
              halloc::ClientSocketDir().c_str());
  std::fflush(stdout);
  // Not through exit(): under ASan, LeakSanitizer's check at exit cannot
  // run in a set-group-ID process (not dumpable), and fails it.
  std::_Exit(0);
}
