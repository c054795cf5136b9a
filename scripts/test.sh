#!/usr/bin/env bash
# Install everything, then lint and run the whole test suite (slow real-model tests included) on
# $PYTEST_WORKERS pytest-xdist workers (default 2: one per core of the 2-core CI machine), one
# CPU thread each. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PIPELINE_DATA_DIR=${PIPELINE_DATA_DIR:-$(cd .. && pwd)/shared/data}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
workers=${PYTEST_WORKERS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((workers > 1 ? 1 : 2))}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -n "$workers" "$@"
