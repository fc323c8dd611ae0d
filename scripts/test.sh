#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh [--fast] [pytest args...]
#   (no --fast) the whole suite on 2 pytest-xdist workers (STREAMVLN_TEST_WORKERS; -n 0: one process)
#   --fast  only the tests that need no server, no torchrun and no subprocess of the CLI or flow
#           (pytest -m "not services and not processes and not slow"; docs/TESTING.md), and a
#           closing line `fast tier: N tests in S s`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FAST_TIER="not services and not processes and not slow"

fast=0
args=()
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then fast=1; else args+=("$arg"); fi
done

scripts/setup.sh

# Offline and without telemetry. MLflow only honours DO_NOT_TRACK=true, hence its own switch.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1

if [[ $fast -eq 0 ]]; then
    # The whole suite waits on servers and subprocesses a good part of the time: two xdist workers
    # (one per core here) share it. Tests of one module, and the modules that read one shared
    # training, stay on one worker (tests/conftest.py). `-n 0` or `-p no:xdist` overrides this.
    parallel=(-n "${STREAMVLN_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder)
    for arg in "${args[@]}"; do
        case "$arg" in -n | -n* | --numprocesses* | no:xdist | -pno:xdist | --dist*) parallel=() ;; esac
    done
    exec .venv/bin/python -m pytest "${parallel[@]}" "${args[@]}"
fi

report="$(mktemp -t streamvln-fast-XXXXXX.xml)"
trap 'rm -f "$report"' EXIT
start=$(date +%s.%N)
rc=0
.venv/bin/python -m pytest -m "$FAST_TIER" --junitxml="$report" "${args[@]}" || rc=$?
end=$(date +%s.%N)
.venv/bin/python - "$report" "$start" "$end" "$rc" <<'PY'
import sys
import xml.etree.ElementTree as ET

report, start, end, rc = sys.argv[1:]
try:
    tests = sum(int(suite.get("tests", 0)) for suite in ET.parse(report).getroot().iter("testsuite"))
except (OSError, ET.ParseError):
    tests = "?"
print(f"fast tier: {tests} tests in {float(end) - float(start):.0f} s (exit {rc})")
PY
exit "$rc"
