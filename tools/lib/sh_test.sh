# shellcheck shell=bash
# The bits every shell test under tools/lib shares: cases recorded in
# CASES, failures in FAILURES (each "CASE: message"), and a gtest-style XML
# report written to $XML_OUTPUT_FILE (Bazel sets it) so that tools/run
# counts each case. Sourced by the *_test.sh files.

CASES=() FAILURES=() CURRENT=
fail() { FAILURES+=("$CURRENT: $*"); echo "FAILED: $CURRENT: $*" >&2; }
expect_eq() { [[ "$1" == "$2" ]] || fail "expected '$2', got '$1' ($3)"; }
expect_match() { [[ "$1" =~ $2 ]] || fail "'$1' does not match /$2/ ($3)"; }

# xml_escape TEXT: TEXT for an XML attribute.
xml_escape() {
  local s="${1//&/&amp;}"
  s="${s//</&lt;}"; s="${s//>/&gt;}"; s="${s//\"/&quot;}"
  echo "$s"
}

# finish_sh_test SUITE: writes the report (when Bazel asked for one), says
# how many cases failed, and returns non-zero if any did.
finish_sh_test() {
  local suite="$1" c f
  if [[ -n ${XML_OUTPUT_FILE:-} ]]; then
    {
      echo '<?xml version="1.0" encoding="UTF-8"?>'
      echo "<testsuites tests=\"${#CASES[@]}\" failures=\"${#FAILURES[@]}\" errors=\"0\">"
      echo "<testsuite name=\"$suite\" tests=\"${#CASES[@]}\" failures=\"${#FAILURES[@]}\">"
      for c in "${CASES[@]}"; do
        echo "<testcase name=\"$c\" classname=\"$suite\">"
        for f in "${FAILURES[@]}"; do
          [[ $f == "$c:"* ]] && echo "<failure message=\"$(xml_escape "$f")\"/>"
        done
        echo "</testcase>"
      done
      echo "</testsuite></testsuites>"
    } >"$XML_OUTPUT_FILE"
  fi
  echo "${#CASES[@]} cases, ${#FAILURES[@]} failures"
  ((${#FAILURES[@]} == 0))
}
