#!/usr/bin/env bash
# Set up (first run) and run the test suite (slow tests excluded; pass -m slow or "" to change).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
