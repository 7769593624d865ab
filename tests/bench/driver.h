// The benchmark driver: starts the floors' servers and hallocd as separate
// processes on sockets under a fresh /tmp directory, runs every measurement
// in worker processes, and prints (and writes as JSON) one row per figure
// beside the floor it is judged against.
#ifndef HALLOC_TESTS_BENCH_DRIVER_H_
#define HALLOC_TESTS_BENCH_DRIVER_H_

#include "tests/bench/bench_util.h"

namespace halloc::bench {

// `halloc_bench run --hallocd=PATH [--backend=memfd-pool] [--json=FILE]
//  [--quick | --smoke]`. Exit 0 when every row was measured.
int RunDriver(const Args& args);

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_DRIVER_H_
