// Worker subcommands of halloc_bench: each runs in its own process (started
// by the driver with fork+exec), prints "ready" when it may be measured
// where that matters, and reports "key value" lines on stdout.
#ifndef HALLOC_TESTS_BENCH_WORKERS_H_
#define HALLOC_TESTS_BENCH_WORKERS_H_

#include <string>

#include "tests/bench/bench_util.h"

namespace halloc::bench {

// Runs worker `name`; the process exit code. -1 for an unknown name.
int RunWorker(const std::string& name, const Args& args);

}  // namespace halloc::bench

#endif  // HALLOC_TESTS_BENCH_WORKERS_H_
