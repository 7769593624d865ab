#!/usr/bin/env bash
# Runs the Python client's pytest suite under Bazel (//clients/python:client_test).
#   run_pytest.sh HALLOCD PEER CONFTEST [pytest args]
# HALLOCD and PEER are runfiles paths of //service:hallocd and
# //tests/integration:peer, CONFTEST the suite's conftest.py (its directory
# holds the suite): runfiles paths, right wherever halloc is (this
# workspace, or another's external @halloc). The report goes to
# $XML_OUTPUT_FILE with the totals on <testsuites>, where tools/run's
# count_cases reads them.
set -uo pipefail

export HALLOC_TEST_HALLOCD="$PWD/$1" HALLOC_TEST_PEER="$PWD/$2"
tests="$(dirname "$3")"
shift 3
# The halloc package (clients/python): sources and generated modules side by
# side there.
PYTHONPATH="$PWD/$(dirname "$tests")"
export PYTHONPATH PYTHONDONTWRITEBYTECODE=1
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
