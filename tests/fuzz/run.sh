#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan + UBSan: the `fuzz` config in
# .bazelrc, which links the asan-ubsan build's objects, in that build's
# output base) and runs each for a while.
#
#   tests/fuzz/run.sh [--seconds N] [--jobs J] [--corpus-dir DIR] [FUZZER...]
#
#   --seconds N      fuzzing time per fuzzer (default 30)
#   --jobs J         fuzzers run at once (default 2)
#   --corpus-dir DIR keep what the fuzzers find in DIR/<fuzzer> (reused by
#                    the next run with the same DIR); default: a fresh temp
#                    dir, removed afterwards unless something crashed
#   FUZZER...        only these (default: all four)
#
# Seeds are read from tests/fuzz/corpus/<fuzzer>/ (never written). Per
# fuzzer it prints the executions and whether it crashed; a crash's input is
# kept under the run's temp dir (path printed) with the fuzzer's report
# beside it. The last line is "fuzz: N passed, N failed, 0 skipped", one per
# fuzzer. Reproduce a crash with: BIN/FUZZER CRASH-FILE (with
# HALLOC_FUZZ_VERBOSE=1, each input's outcome is printed too).
#
# Environment: HALLOC_FUZZ_OUTPUT_BASE (default: the one `tools/run
# sanitizers asan-ubsan` uses, ~/.cache/bazel-halloc-asan-ubsan/<hash of the
# checkout's path>, so after the sanitized suites only the fuzzers' links
# are left to do; never the main output base), HALLOC_FUZZ_BUILD_JOBS
# (bazel --jobs, default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

ALL=(broker_record_fuzzer layout_fuzzer policy_fuzzer metadata_fuzzer)
seconds=30 jobs=2 corpus_dir="" selected=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --jobs=*) jobs="${1#*=}"; shift ;;
    --corpus-dir) corpus_dir="$2"; shift 2 ;;
    --corpus-dir=*) corpus_dir="${1#*=}"; shift ;;
    -h|--help) sed -n '2,26p' tests/fuzz/run.sh | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) selected+=("$1"); shift ;;
  esac
done
[[ ${#selected[@]} -gt 0 ]] || selected=("${ALL[@]}")
for f in "${selected[@]}"; do
  [[ " ${ALL[*]} " == *" $f "* ]] || { echo "unknown fuzzer $f (have: ${ALL[*]})" >&2; exit 2; }
done

log() { printf '== %s\n' "$*" >&2; }

# asan-ubsan's (tools/run's sanitizer_output_base): one per checkout (as
# Bazel's own default is), so two clones never share one. Never the main
# output base: other flags would throw its cache away.
SAN_ROOT="${HALLOC_SANITIZER_OUTPUT_BASE_ROOT:-$HOME/.cache/bazel-halloc-asan-ubsan}"
OUTPUT_BASE="${HALLOC_FUZZ_OUTPUT_BASE:-$SAN_ROOT/$(printf %s "$ROOT" | md5sum | cut -c1-12)}"
BAZEL=(bazel "--output_base=$OUTPUT_BASE" --max_idle_secs=900)
targets=()
for f in "${selected[@]}"; do targets+=("//tests/fuzz:$f"); done

tmp="$(mktemp -d /tmp/halloc-fuzz-XXXXXX)"
start=$(date +%s)
log "building ${selected[*]} (clang-14, ASan+UBSan, output base $OUTPUT_BASE)"
if ! "${BAZEL[@]}" build --config=fuzz --jobs="${HALLOC_FUZZ_BUILD_JOBS:-2}" \
    --noshow_progress --ui_event_filters=-info,-stdout,-stderr "${targets[@]}" \
    >"$tmp/build.log" 2>&1; then
  grep -E "error|ERROR" "$tmp/build.log" | head -40 >&2 || tail -40 "$tmp/build.log" >&2
  echo "fuzz: build failed (log: $tmp/build.log)"
  echo "fuzz: 0 passed, ${#selected[@]} failed, 0 skipped"
  exit 1
fi
bin="$("${BAZEL[@]}" info --config=fuzz bazel-bin 2>/dev/null)/tests/fuzz"
log "built in $(( $(date +%s) - start )) s; fuzzing ${seconds} s each, ${jobs} at a time"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if command -v llvm-symbolizer-14 >/dev/null; then
  export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer-14)"
fi

work="${corpus_dir:-$tmp/corpus}"
run_one() {
  local f="$1" dict=()
  mkdir -p "$work/$f" "$tmp/crashes/$f"
  [[ -f "tests/fuzz/$f.dict" ]] && dict=("-dict=tests/fuzz/$f.dict")
  # The outer timeout only catches a fuzzer that hangs outside libFuzzer's
  # own per-input -timeout.
  timeout --kill-after=10 $((seconds + 120)) \
    "$bin/$f" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$tmp/crashes/$f/" "${dict[@]}" \
      "$work/$f" "tests/fuzz/corpus/$f" >"$tmp/$f.log" 2>&1
  echo $? >"$tmp/$f.rc"
}

pids=()
for f in "${selected[@]}"; do
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || true; done
  run_one "$f" &
  pids+=($!)
done
wait "${pids[@]}" 2>/dev/null || true

passed=0 failed=0
for f in "${selected[@]}"; do
  rc="$(cat "$tmp/$f.rc" 2>/dev/null || echo 1)"
  execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$tmp/$f.log" | grep -oE '[0-9]+$' | tail -1 || true)"
  [[ -n "$execs" ]] || execs="$(grep -oE '^Done [0-9]+ runs' "$tmp/$f.log" | grep -oE '[0-9]+' | tail -1 || true)"
  corpus="$(ls "$work/$f" 2>/dev/null | wc -l)"
  artifact="$(ls -d "$tmp/crashes/$f"/* 2>/dev/null | head -1 || true)"
  if [[ "$rc" == 0 && -z "$artifact" ]]; then
    passed=$((passed + 1))
    printf 'fuzz: %-22s ok       %9s execs in %s s, corpus %s\n' \
      "$f" "${execs:-?}" "$seconds" "$corpus"
  else
    failed=$((failed + 1))
    printf 'fuzz: %-22s CRASHED  %9s execs (exit %s)\n' "$f" "${execs:-?}" "$rc"
    if [[ -n "$artifact" ]]; then
      cp "$tmp/$f.log" "$artifact.log"
      echo "      input:  $artifact"
      echo "      report: $artifact.log"
      echo "      replay: $bin/$f $artifact"
    else
      echo "      log: $tmp/$f.log"
    fi
    # The report's first lines: the broken invariant or the sanitizer's.
    grep -E -m 12 'invariant failed|^  |ERROR: |SUMMARY|runtime error|#[0-9] ' "$tmp/$f.log" \
      | sed 's/^/      | /' || true
  fi
done
if [[ $failed -eq 0 ]]; then rm -rf "$tmp"; fi
log "fuzz total $(( $(date +%s) - start )) s"
echo "fuzz: $passed passed, $failed failed, 0 skipped"
[[ $failed -eq 0 ]]
