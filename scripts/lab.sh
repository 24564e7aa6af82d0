#!/usr/bin/env bash
# Open JupyterLab on the explorer, from .venv (created on first use, as by run_tests.sh).
#   bash scripts/lab.sh [jupyter lab options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap_env.sh
as_root=()
[ "$(id -u)" = 0 ] && as_root=(--allow-root)  # JupyterLab refuses root without it
exec python -m jupyter lab "${as_root[@]}" "$@" notebooks/00_explore.ipynb
