#!/usr/bin/env bash
# A second virtualenv with the transformers version the published StreamVLN code pins (4.45.1),
# in which tests/test_checkpoint_compat.py reads our saved checkpoints the way the published
# evaluation does. Idempotent: a stamp in the venv records the pins; when it matches, nothing
# is installed. Prints the venv's python on its last line.
#
# Config and tokenizer alone need no torch; torch (the same CPU pin as .venv, installed from the
# local wheel) is there so the test can also load the weights with transformers 4.45.
set -euo pipefail

PINS="transformers==4.45.1 torch==2.13.0"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

VENV=.venv-tf445
STAMP="$VENV/.streamvln-compat-stamp"

if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi

# One builder at a time (two test sessions may start together).
exec 9>"$VENV.lock"
flock 9

if [[ ! -x "$VENV/bin/python" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$PINS" ]]; then
    echo "compat_venv.sh: building $VENV ($PINS)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086  # the pins are separate arguments
    "$VENV/bin/python" -m pip install --quiet $PINS >&2
    echo "$PINS" >"$STAMP"
fi
echo "$PWD/$VENV/bin/python"
