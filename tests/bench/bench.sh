#!/bin/bash
# The benchmark suite of issue 6: builds in opt mode and runs halloc_bench
# against the real hallocd (daemon, floor servers and clients as separate
# processes on sockets under a fresh /tmp directory).
#
#   tests/bench/bench.sh [--json FILE] [--quick] [--smoke] [--backend NAME] [--keep]
#                        [--control_direct]
#
# --backend: hallocd's backend (default memfd-pool; "memfd" is the unpooled
# baseline). --keep: keep the temp dir (hallocd.log) after a failure.
# --control_direct: hallocd hands gRPC its connections directly
# (--nocontrol_relay, Linux 6.16+ only: no HTTP/2 guard), not through its
# relay (its default, service/stream_relay.h).
# Run from the repository root (tools/run bench does).
set -euo pipefail
cd "$(dirname "$0")/../.."

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) args+=("--json=$(realpath -m "$2")"); shift 2 ;;
    --json=*) args+=("--json=$(realpath -m "${1#--json=}")"); shift ;;
    --backend) args+=("--backend=$2"); shift 2 ;;
    --quick|--smoke|--keep|--control_direct|--backend=*) args+=("$1"); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! bazel build -c opt //tests/bench:halloc_bench //service:hallocd >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
# Not bazel-bin: other builds in other modes move that symlink.
bin="$(bazel info -c opt bazel-bin 2>/dev/null)"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin/tests/bench/halloc_bench" run --hallocd="$bin/service/hallocd" "${args[@]}"
