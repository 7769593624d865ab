#!/usr/bin/env bash
# halloc as a Bazel dependency: builds and tests examples/downstream, a
# workspace of its own that declares halloc with local_repository and
# halloc_deps() (deps.bzl), and whose test derives from HallocTest.
#
#   tools/downstream-test.sh [bazel test args...]
#
# Runs `bazel test //...` in examples/downstream (its own output base, as
# Bazel gives every workspace directory). The last line on stdout is
# "downstream: N passed, N failed, N skipped": gtest cases from the test.xml
# of each target this run tested, as tools/run counts them; a run that fails
# without a failed case (a build error) counts one failure.
# Cold (a new output base: the part of halloc the test links, ~40 objects,
# compiled from scratch): ~45 s on 2 cores at load 3; warm: 1-4 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/examples/downstream"

log() { printf '== %s\n' "$*" >&2; }

# Not kept for hours: this workspace's server is a third JVM beside the
# main build's.
BAZEL=(bazel --max_idle_secs=900)

# Sums the gtest case counts of the test.xml files given on stdin.
count_reports() {
  local total=0 failed=0 skipped=0 f t fl er sk head
  while IFS= read -r f; do
    head=$(grep -o '<testsuites [^>]*' "$f" || true)
    t=$(grep -o ' tests="[0-9]*"' <<<"$head" | grep -o '[0-9]*' || echo 0)
    fl=$(grep -o ' failures="[0-9]*"' <<<"$head" | grep -o '[0-9]*' || echo 0)
    er=$(grep -o ' errors="[0-9]*"' <<<"$head" | grep -o '[0-9]*' || echo 0)
    sk=$(grep -o '<skipped' "$f" | wc -l || true)
    total=$((total + ${t:-0})); failed=$((failed + ${fl:-0} + ${er:-0}))
    skipped=$((skipped + ${sk:-0}))
  done
  echo "$total $failed $skipped"
}

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
start=$(date +%s)
log "bazel test //... in examples/downstream (halloc as @halloc)"
set +e
"${BAZEL[@]}" test //... --keep_going --noshow_progress --test_summary=short "$@" 2>&1 \
  | tee "$out" | grep -E "PASSED|FAILED|TIMEOUT|NO STATUS|ERROR:|Executed" >&2
rc=${PIPESTATUS[0]}
set -e

# Only the reports of targets this invocation ran (or took from its cache):
# not those that failed to build (NO STATUS, FAILED TO BUILD), whose
# test.xml, if any, is an earlier run's.
testlogs="$("${BAZEL[@]}" info bazel-testlogs 2>/dev/null || true)"
read -r t f s < <(
  sed -nE 's#^//([^ ]*):([^ ]+) +(\(cached\) )?((PASSED|FAILED|TIMEOUT) in |FLAKY).*#\1/\2#p' "$out" \
    | sort -u | while read -r target; do
        xml="$testlogs/${target#/}/test.xml"
        [[ -n "$testlogs" && -f "$xml" ]] && echo "$xml"
      done | count_reports)
passed=$((t - f - s))
broken=$(grep -cE "^//.*(FAILED|TIMEOUT|NO STATUS)" "$out" || true)
# Non-zero without a failed case (a build error, a crash before the report,
# rc 4: no test target at all) counts.
if [[ $rc -ne 0 && $f -eq 0 ]]; then f=$(( broken > 0 ? broken : 1 )); fi
log "downstream took $(( $(date +%s) - start )) s"
echo "downstream: $passed passed, $f failed, $s skipped"
[[ $rc -eq 0 && $f -eq 0 ]]
