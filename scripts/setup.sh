#!/usr/bin/env bash
# Create .venv (if missing) and install retinamask with everything it can use.
# Idempotent: a second run only checks that the install is current.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.retinamask-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing retinamask and its dependencies into .venv (torch comes from local disk where available)"
    .venv/bin/python -m pip install --quiet -e ".[all,test]"
    touch "$stamp"
fi
