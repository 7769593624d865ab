# shellcheck shell=bash
# Sourced by tools/run.
#
# A sanitizer config leaves out the suites that cannot run under it
# (.bazelrc: `test:asan-ubsan --test_tag_filters=-no_asan`, tsan's
# -no_tsan). Bazel keeps only the last --test_tag_filters it is given, so
# `tools/run sanitizers asan-ubsan --test_tag_filters=production` would
# drop that exclusion and run load_test (tagged production and no_asan)
# sanitized, where its RSS bound cannot hold.

# keep_tag_exclusion OUT EXCLUDED ARGS...: copies ARGS into the array named
# OUT, with EXCLUDED (e.g. -no_asan) added to each --test_tag_filters in
# them (the `=VALUE` form and the two-word form). ARGS without one are
# copied as they are: the config's own filter then applies.
keep_tag_exclusion() {
  local -n _out="$1"
  local excluded="$2"
  shift 2
  _out=()
  while (($#)); do
    case "$1" in
      --test_tag_filters=*)
        _out+=("$(add_tag_exclusion "${1#--test_tag_filters=}" "$excluded")") ;;
      --test_tag_filters)
        if (($# >= 2)); then
          _out+=("$(add_tag_exclusion "$2" "$excluded")")
          shift
        else
          _out+=("$1")  # bazel reports the missing value
        fi ;;
      *) _out+=("$1") ;;
    esac
    shift
  done
}

# add_tag_exclusion FILTERS EXCLUDED: the flag --test_tag_filters=FILTERS
# with EXCLUDED added to its comma-separated list (unless it is there).
# A filter that asks for the excluded tag's suites (no_asan) selects
# nothing then: they are left out because they cannot run sanitized.
add_tag_exclusion() {
  local filters="$1" excluded="$2" f
  local IFS=,
  for f in $filters; do
    [[ "$f" == "$excluded" ]] && { echo "--test_tag_filters=$filters"; return; }
  done
  echo "--test_tag_filters=${filters:+$filters,}$excluded"
}
