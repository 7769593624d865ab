// The floor workers of halloc_bench (floor_workers.cc): what the driver
// measures halloc against, each in its own process as workers.h says.
#ifndef HALLOC_TESTS_BENCH_FLOOR_WORKERS_H_
#define HALLOC_TESTS_BENCH_FLOOR_WORKERS_H_

#include "tests/bench/bench_util.h"

namespace halloc::bench {

// A gRPC Echo server on --socket, until the driver closes our stdin.
int EchoServer(const Args& a);
// The scm_fd floor's server on --socket: answers each request (4 bytes,
// the client's CPU hint) with one record carrying a memfd, from the
// client's CPU.
int ScmServer(const Args& a);
// --n timed Echo calls to --socket: echo.* percentiles.
int EchoLatency(const Args& a);
// --n timed scm_fd round trips to --socket: scm.* percentiles.
int ScmLatency(const Args& a);
// --n fresh memfds of --size, committed and mapped: memfd.* percentiles.
int MemfdFloor(const Args& a);

// One scm_fd request on `sock`: the CPU the client sends from, plus one
// (0: unknown), like BrokerRequest.cpu. true once sent.
bool SendScmRequest(int sock);

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_FLOOR_WORKERS_H_
