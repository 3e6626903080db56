#!/usr/bin/env bash
# Set up (first run), check the house (ruff lint + format, import-linter's layer, torch-free and
# acyclic contracts), then run the test suite (slow tests excluded; pass -m slow for them alone, -m "" for
# everything, as .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check retinamask benchmarks tests
.venv/bin/ruff format --check retinamask benchmarks tests
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
