#!/usr/bin/env bash
# Set up (first run) and run the whole flow on the embedded default: offline, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/retinamask demo "$@"
