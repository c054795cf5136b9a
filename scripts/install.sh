#!/usr/bin/env bash
# Create .venv with the pinned CPU torch, then the project and its dev tools. Idempotent.
# GPU users: install your CUDA build of torch==2.13.0 first, then `pip install -e '.[gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
echo "installed into $(pwd)/.venv"
