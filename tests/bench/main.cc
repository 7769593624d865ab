// halloc_bench: the benchmark suite of issue 6 (see driver.h, README.md).
//
//   halloc_bench run --hallocd=PATH [--backend=NAME] [--json=FILE] [--quick|--smoke]
//   halloc_bench <worker> --key=value...   (started by `run`; see workers.h)
#include <cstdio>
#include <string>

#include "tests/bench/bench_util.h"
#include "tests/bench/driver.h"
#include "tests/bench/workers.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s run --hallocd=PATH [--json=FILE] [--quick]\n",
                 argv[0]);
    return 2;
  }
  const std::string cmd = argv[1];
  const halloc::bench::Args args(argc - 2, argv + 2);
  if (cmd == "run") return halloc::bench::RunDriver(args);
  const int rc = halloc::bench::RunWorker(cmd, args);
  if (rc == -1) {
    std::fprintf(stderr, "unknown subcommand '%s'\n", cmd.c_str());
    return 2;
  }
  return rc;
}
