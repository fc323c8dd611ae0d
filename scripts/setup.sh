#!/usr/bin/env bash
# Idempotent environment setup from the project's own files: .venv with torch (CPU) and the
# package in editable mode with its test extra. A stamp in .venv records the sha256 of
# pyproject.toml plus the torch pin; when it matches, nothing is reinstalled.
set -euo pipefail

TORCH_PIN="torch==2.13.0"  # keep equal to the pin in pyproject.toml

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

VENV=.venv
STAMP="$VENV/.streamvln-setup.sha256"

if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi

if ! grep -qF "\"$TORCH_PIN\"" pyproject.toml; then
    echo "setup.sh: pyproject.toml does not pin $TORCH_PIN; update TORCH_PIN in $0" >&2
    exit 1
fi

# Debian's Chromium for the browser tests (tests/test_ui_screenshots.py): Playwright drives it
# through executable_path and never downloads a browser of its own. Checked before the stamp
# below, so a machine with a ready .venv but no browser still gets one; skipped when present.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing Debian's chromium (for the browser tests)"
    SUDO=""
    if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; }; then
        echo "setup.sh: could not install chromium; tests/test_ui_screenshots.py needs it" >&2
    fi
fi

want="$({ cat pyproject.toml; echo "$TORCH_PIN"; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup.sh: creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi

echo "setup.sh: installing $TORCH_PIN (first, so the CPU build is the one that stays)"
"$VENV/bin/python" -m pip install "$TORCH_PIN"
echo "setup.sh: installing the project with its test extra"
"$VENV/bin/python" -m pip install -e ".[test]"

echo "$want" >"$STAMP"
echo "setup.sh: done"
