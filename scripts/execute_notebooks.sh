#!/usr/bin/env bash
# Re-execute the notebook templates in notebooks/ at their default (smoke) parameters, in a fresh
# ATOP_HOME, and tidy their outputs for committing: figures as images, progress bars as text at
# their final state, no machine paths (atop_core/jupyter.py). The pipeline notebooks run first,
# so the explorer (00) finds their smoke defenses.
#   bash scripts/execute_notebooks.sh [NOTEBOOK...]   (default: all of notebooks/)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap_env.sh
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
export ATOP_HOME="$home" ATOP_PROGRESS=text
if [ $# -eq 0 ]; then
  set -- notebooks/[1-9]*.ipynb notebooks/0*.ipynb
fi
for nb in "$@"; do
  echo "execute_notebooks: $nb"
  python -m papermill "$nb" "$nb" -k python3 --log-level WARNING
  python -m atop_core.jupyter "$nb"
done
