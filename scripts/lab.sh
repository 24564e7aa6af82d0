#!/usr/bin/env bash
# Open JupyterLab on the explorer. JupyterLab runs from its own environment, .venv-lab; notebooks
# run in the project's (.venv, or the active environment that imports this checkout), registered
# there as the kernel python3. Both are created on first use (scripts/bootstrap_env.sh, lab_env.sh).
#   bash scripts/lab.sh [jupyter lab options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap_env.sh
source scripts/lab_env.sh
export JUPYTER_PATH="$ATOP_LAB_ENV/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
as_root=()
[ "$(id -u)" = 0 ] && as_root=(--allow-root)  # JupyterLab refuses root without it
exec "$ATOP_LAB_ENV/bin/python" -m jupyter lab "${as_root[@]}" "$@" notebooks/00_explore.ipynb
