#!/usr/bin/env bash
# Install (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OMP_NUM_THREADS=1 .venv/bin/python -m pytest "$@"
