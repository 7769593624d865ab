#!/usr/bin/env bash
# Tests tools/lib/tag_filters.sh: a caller's --test_tag_filters keeps the
# sanitizer config's exclusion, in both of Bazel's flag forms, and other
# arguments pass through unchanged.
# (tools/lib/sh_test.sh writes the report.)
set -uo pipefail

LIB=${1:-$(dirname "${BASH_SOURCE[0]}")/tag_filters.sh}
# shellcheck source=tools/lib/tag_filters.sh
source "$LIB"
# shellcheck source=tools/lib/sh_test.sh
source "${2:-$(dirname "${BASH_SOURCE[0]}")/sh_test.sh}"

# expect_args WHAT EXPECTED... -- ACTUAL...
expect_args() {
  local what="$1"; shift
  local expected=() actual=()
  while [[ $1 != -- ]]; do expected+=("$1"); shift; done
  shift
  actual=("$@")
  if [[ "${expected[*]@Q}" != "${actual[*]@Q}" ]]; then
    fail "$what: expected (${expected[*]@Q}), got (${actual[*]@Q})"
  fi
}
run_case() { CURRENT=$1; CASES+=("$1"); "$1"; }

no_filter_passes_through() {
  local out
  keep_tag_exclusion out -no_asan --runs_per_test=2 "//service:a test" --test_output=all
  expect_args "untouched" --runs_per_test=2 "//service:a test" --test_output=all -- "${out[@]}"
  keep_tag_exclusion out -no_asan
  expect_args "no arguments" -- "${out[@]}"
}

equals_form_keeps_exclusion() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters=production //tests/load:all
  expect_args "one tag" --test_tag_filters=production,-no_asan //tests/load:all -- "${out[@]}"
  keep_tag_exclusion out -no_tsan --test_tag_filters=a,-b
  expect_args "two tags" --test_tag_filters=a,-b,-no_tsan -- "${out[@]}"
}

two_word_form_keeps_exclusion() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters production --jobs=1
  expect_args "two words" --test_tag_filters=production,-no_asan --jobs=1 -- "${out[@]}"
}

empty_filter_becomes_the_exclusion() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters=
  expect_args "empty" --test_tag_filters=-no_asan -- "${out[@]}"
}

exclusion_already_there_is_not_repeated() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters=-no_asan,production
  expect_args "present" --test_tag_filters=-no_asan,production -- "${out[@]}"
}

every_filter_is_rewritten() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters=a --test_tag_filters b
  expect_args "both" --test_tag_filters=a,-no_asan --test_tag_filters=b,-no_asan -- "${out[@]}"
}

missing_value_is_left_for_bazel() {
  local out
  keep_tag_exclusion out -no_asan --test_tag_filters
  expect_args "dangling" --test_tag_filters -- "${out[@]}"
}

for c in no_filter_passes_through equals_form_keeps_exclusion two_word_form_keeps_exclusion \
         empty_filter_becomes_the_exclusion exclusion_already_there_is_not_repeated \
         every_filter_is_rewritten missing_value_is_left_for_bazel; do
  run_case "$c"
done

finish_sh_test TagFilters
