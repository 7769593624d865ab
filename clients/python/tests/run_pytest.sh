#!/usr/bin/env bash
# Runs the Python client's pytest suite under Bazel (//clients/python:client_test).
#   run_pytest.sh HALLOCD PEER TESTDIR [pytest args]
# HALLOCD and PEER are runfiles paths of //service:hallocd and
# //tests/integration:peer. The report goes to $XML_OUTPUT_FILE with the
# totals on <testsuites>, where tools/run's count_cases reads them.
set -uo pipefail

export HALLOC_TEST_HALLOCD="$PWD/$1" HALLOC_TEST_PEER="$PWD/$2"
tests="$3"
shift 3
# The halloc package: sources and generated modules side by side here.
export PYTHONPATH="$PWD/clients/python" PYTHONDONTWRITEBYTECODE=1
# A preload meant for our C++ processes (tools/run sanitizers tsan's shim
# needs a TSan-built program) is theirs, never the interpreter's.
export HALLOC_TEST_CHILD_LD_PRELOAD="${LD_PRELOAD:-}"
unset LD_PRELOAD

raw="${TEST_TMPDIR:-$(mktemp -d)}/pytest.xml"
/usr/bin/python3 -m pytest -p no:cacheprovider -q -rs --junitxml="$raw" "$@" "$tests"
rc=$?
if [[ -f "$raw" ]]; then
  /usr/bin/python3 "$tests/junit_totals.py" "$raw" "${XML_OUTPUT_FILE:-$raw.out}" || rc=1
fi
exit "$rc"
